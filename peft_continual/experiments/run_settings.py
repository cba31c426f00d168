"""The settings an output folder was trained with, so that a rerun resumes the same run or stops with a clear error.

A rerun of a recipe resumes from what its output folder holds: the tables of finished rounds, the last ``Trainer``
checkpoint of an interrupted one, the few-shot rows. Those fit only the settings that made them. After a change to
the task file (say 40 virtual tokens instead of 20) the old table fails deep inside the model ("row 6 has 40
virtual-token positions but ... total_virtual_tokens=20"), and a change of steps or learning rate would silently
mix two runs in one result table. ``check_run_settings`` records the settings in the folder on the first run and
compares them on every later one. A setting that a later version of the library added is absent from an older run's
file; it counts as the same when its value now is its default (which reproduces what the older run did), so an
upgrade does not strand finished runs.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

from peft_continual._io import write_atomic
from peft_continual.errors import ConfigError
from peft_continual.processes import main_process_only

SETTINGS_FILE = "run_settings.json"


@main_process_only
def check_run_settings(
    output_dir: Path | str, settings: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> None:
    """Record ``settings`` in ``output_dir``, or, if it holds a run already, check they are the same (under several
    processes, the main process does both).

    Args:
        output_dir: The run's output folder (created if missing).
        settings: JSON-ready values that decide what the run trains and reports (task file, model, steps, rates...);
            paths to the data or the output, batch sizes of evaluation and logging belong elsewhere.
        defaults: Each setting's default by name (``setting_defaults``): a setting the saved file lacks is the same
            when its value now is its default.

    Raises:
        ConfigError: the folder holds a run made with other settings; the message lists each difference.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> check_run_settings(folder, {"learning_rate": 0.01, "tasks": {"sentiment": {"total_virtual_tokens": 20}}})
        >>> check_run_settings(folder, {"learning_rate": 0.01, "tasks": {"sentiment": {"total_virtual_tokens": 40}}})
        Traceback (most recent call last):
        ...
        peft_continual.errors.ConfigError: ... tasks.sentiment.total_virtual_tokens: 20 then, 40 now ...
    """
    output_dir = Path(output_dir)
    path = output_dir / SETTINGS_FILE
    current = json.loads(json.dumps(settings))  # tuples -> lists, enums -> values: compared as they are stored
    if not path.exists():
        write_atomic(path, json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    changes = differences(
        json.loads(path.read_text(encoding="utf-8")), current, json.loads(json.dumps(defaults or {}, default=str))
    )
    if changes:
        listed = "\n".join(f"  {change}" for change in changes)
        raise ConfigError(
            f"{output_dir} holds a run made with other settings, so its checkpoints and tables do not fit this one:\n"
            f"{listed}\nUse a new --output_dir, or delete {output_dir} to start over."
        )


def training_settings(training: Any, names: Iterable[str]) -> dict[str, Any]:
    """The training arguments ``names`` as a run's settings. ``per_device_train_batch_size`` is recorded as the rows
    of one step of all the processes (``train_batch_size_all_processes``), so a run started in N processes at batch
    B/N resumes in one process at batch B: the same rows make each step (``ContinualTrainer``'s sampler orders
    them so)."""
    settings = {name: getattr(training, name, None) for name in names if name != "per_device_train_batch_size"}
    if "per_device_train_batch_size" in names:
        settings["train_batch_size_all_processes"] = training.per_device_train_batch_size * training.world_size
    return settings


def setting_defaults(*classes: type) -> dict[str, Any]:
    """The default of every field of the dataclasses ``classes`` that has one, by field name (for
    ``check_run_settings``), and of the fields of the dataclasses they hold (a task's ``evaluation``, its ``labels``):
    a field added to a nested config is then the same run at its default too."""
    defaults: dict[str, Any] = {}
    for cls in _with_nested_dataclasses(classes):
        for f in fields(cls):
            if f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                continue  # a required field: every run gives it
            defaults.setdefault(f.name, asdict(value) if is_dataclass(value) else value)
    return defaults


def _with_nested_dataclasses(classes: Iterable[type]) -> list[type]:
    """``classes`` and, after them, every dataclass type their fields are annotated with (``X`` or ``X | None``),
    recursively, each once."""
    found: list[type] = []
    pending = list(classes)
    while pending:
        cls = pending.pop(0)
        if cls in found:
            continue
        found.append(cls)
        try:
            annotations = typing.get_type_hints(cls)
        except (NameError, TypeError):  # an annotation this module cannot resolve: its own fields still count
            continue
        for annotation in annotations.values():
            pending += [
                t for t in (annotation, *typing.get_args(annotation)) if isinstance(t, type) and is_dataclass(t)
            ]
    return found


def differences(saved: Any, current: Any, defaults: Mapping[str, Any] | None = None, key: str = "") -> list[str]:
    """``key: <saved> then, <current> now`` for each leaf that differs (dotted keys for nested mappings); a name the
    saved mapping lacks whose value now is its entry in ``defaults`` does not differ."""
    defaults = defaults or {}
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for name in sorted(set(saved) | set(current), key=str):
            inner = f"{key}.{name}" if key else str(name)
            if name not in current:
                found.append(f"{inner}: {saved[name]!r} then, not set now")
            elif name not in saved:
                if name not in defaults or current[name] != defaults[name]:
                    found.append(f"{inner}: not set then, {current[name]!r} now")
            else:
                found += differences(saved[name], current[name], defaults, inner)
        return found
    return [] if saved == current else [f"{key}: {saved!r} then, {current!r} now"]
