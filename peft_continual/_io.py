"""The one way this package writes files: atomically, so a write that dies midway leaves the old files whole.

- ``write_atomic``: one text file, through a temporary sibling and ``os.replace`` (results, run settings, cards);
- ``files_into_place``: files written into a staging folder inside the target folder, then moved in one by one,
  some last (``save_pretrained``: the ``adapter_config.json`` files last, so no half adapter is ever loadable);
- ``folder_into_place``: a whole folder built beside the target and renamed to it in one step (the model cache).

Staging folders of killed processes:  a process killed in the middle (``kill -9``, a lost machine) cannot remove its staging folder, so
every writer names its folder ``<prefix><pid>-<random>`` and removes, before it starts, the folders of that prefix
whose process is gone; folders of processes still running (another save in progress) are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator
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


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary sibling and ``os.replace``, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def files_into_place(
    target: Path, prefix: str, last: Collection[str] = (), keep: Collection[str] = ()
) -> Iterator[Path]:
    """Yield an empty staging folder inside ``target``; when the block succeeds, move every file in it into ``target``.

    Each file is flushed to disk before its name points at it, and files named in ``last`` move after all others.
    Files named in ``keep`` that ``target`` already has are copied into the staging folder first (a writer that
    updates a file, like PEFT's model card). The staging folder is removed whatever happens, and so is ``target``
    if this call created it and nothing was moved in.
    """
    created = not target.is_dir()
    target.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(target, prefix)  # left by writers that were killed
    staging = target / staging_name(prefix)
    staging.mkdir()
    try:
        for name in keep:
            if (target / name).is_file():
                shutil.copy2(target / name, staging / name)
        yield staging
        files = [path for path in staging.rglob("*") if path.is_file()]
        for path in sorted(files, key=lambda path: path.name in last):
            destination = target / path.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "r+b") as file:  # the bytes reach the disk before the name points at them
                os.fsync(file.fileno())
            os.replace(path, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and target.is_dir() and not any(target.iterdir()):
            target.rmdir()


@contextlib.contextmanager
def folder_into_place(target: Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty sibling folder of ``target``; when the block succeeds, rename it to ``target`` in one step.

    The sibling lives in the same parent, so the rename never crosses file systems. If another process finished
    ``target`` first (``is_complete(target)``), its copy is kept and ours discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.partial-"
    remove_abandoned_staging(target.parent, prefix)
    staging = target.parent / staging_name(prefix)
    staging.mkdir()  # not mkdtemp: its 0700 mode would stick to the folder after the rename
    try:
        yield staging
        try:
            os.replace(staging, target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
