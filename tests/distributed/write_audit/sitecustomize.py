"""Logs every file a process writes under ``$WRITE_AUDIT_ROOT`` to ``$WRITE_AUDIT_LOG`` as ``<rank>\\t<path>``.

Put on ``PYTHONPATH`` of a launched run (Python imports ``sitecustomize`` at start-up in every process), so a test
can tell which process wrote which file: ``open`` in a writing mode, and the ``os.replace``/``os.rename`` that put
an atomically written file or folder into place (safetensors writes from Rust, but our saves stage and rename).
"""

import builtins
import io
import os

ROOT = os.environ.get("WRITE_AUDIT_ROOT")
LOG = os.environ.get("WRITE_AUDIT_LOG")

if ROOT and LOG:
    _open, _replace, _rename = builtins.open, os.replace, os.rename

    def _record(path):
        try:
            path = os.path.abspath(os.fspath(path))
        except TypeError:  # a file descriptor
            return
        if path.startswith(ROOT) and path != LOG:
            with _open(LOG, "a", encoding="utf-8") as log:  # one short line per write: appends do not interleave
                log.write(f"{os.environ.get('RANK', '0')}\t{path}\n")

    def audited_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            _record(file)
        return _open(file, mode, *args, **kwargs)

    def audited_replace(source, destination, *args, **kwargs):
        _record(destination)
        return _replace(source, destination, *args, **kwargs)

    def audited_rename(source, destination, *args, **kwargs):
        _record(destination)
        return _rename(source, destination, *args, **kwargs)

    builtins.open = io.open = audited_open
    os.replace, os.rename = audited_replace, audited_rename
