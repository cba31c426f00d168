"""Staging folders of atomic writes, and the clean-up of the ones that killed processes left behind.

Saves write into a staging folder and move the finished files into place, so a save that dies midway leaves the old
files whole. A process killed in the middle (``kill -9``, a lost machine) cannot remove its staging folder, so
every writer names its folder ``<prefix><pid>-<random>`` and removes, before it starts, the folders of that prefix
whose process is gone; folders of processes still running (another save in progress) are left alone.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def staging_name(prefix: str) -> str:
    """A staging folder name of this process: ``<prefix><pid>-<8 hex>``."""
    return f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_abandoned_staging(folder: Path, prefix: str) -> list[Path]:
    """Delete the staging folders ``folder/<prefix><pid>-*`` whose process is no longer running; return them."""
    removed = []
    for staging in folder.glob(f"{prefix}*"):
        pid = staging.name.removeprefix(prefix).split("-")[0]
        if staging.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def process_alive(pid: int) -> bool:
    """Say whether process ``pid`` may still be running; on Windows always yes, as signal 0 there is Ctrl+C."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive but not ours (PermissionError), or a platform without signal 0
        return True
    return True
