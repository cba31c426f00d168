"""Checks of the values an ``adapter_config.json`` of this method carries, before they reach the model.

A hand-edited, damaged or newer file must fail here with the field and what it should hold (``ConfigError``), not
with a ``TypeError`` from deep inside the model, and an unknown field is refused with the closest valid name (PEFT
alone drops it with a warning to upgrade PEFT). ``ContinualPromptConfig`` calls these from ``__post_init__`` and
``check_kwargs``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Collection, Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

from peft_continual.errors import ConfigError
from peft_continual.version import __version__


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_field_types(config: Any) -> None:
    """The shapes of the fields filled on build (token ids, frozen tasks, fingerprint...); tuples and paths given in
    code become lists and strings first, as JSON would hold them."""
    if isinstance(config.training_tasks, tuple):
        config.training_tasks = list(config.training_tasks)
    if isinstance(config.tokenizer_name_or_path, os.PathLike):
        config.tokenizer_name_or_path = os.fspath(config.tokenizer_name_or_path)
    for name in ("taskname_token_ids", "init_token_ids"):
        value = getattr(config, name)
        if isinstance(value, Mapping):
            setattr(config, name, {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()})
    checks = {
        "tokenizer_name_or_path": (_optional(config.tokenizer_name_or_path, str), "a string or null"),
        "taskname_token_ids": (_ids_by_task(config.taskname_token_ids), "an object of task name -> list of ids"),
        "init_token_ids": (_ids_by_task(config.init_token_ids), "an object of task name -> list of ids"),
        "frozen_tasks": (
            isinstance(config.frozen_tasks, dict) and all(positive_int(n) for n in config.frozen_tasks.values()),
            "an object of task name -> number of virtual tokens",
        ),
        "training_tasks": (
            config.training_tasks is None
            or (isinstance(config.training_tasks, list) and all(isinstance(n, str) for n in config.training_tasks)),
            "a list of task names or null",
        ),
        "token_dim": (config.token_dim is None or positive_int(config.token_dim), "a positive integer or null"),
        "base_model_fingerprint": (_optional(config.base_model_fingerprint, dict), "an object or null"),
        "peft_continual_version": (_optional(config.peft_continual_version, str), "a version string"),
    }
    for name, (valid, expected) in checks.items():
        if not valid:
            raise ConfigError(f"{name} must be {expected}, got {getattr(config, name)!r}")


def refuse_unknown_fields(known: Collection[str], kwargs: Mapping[str, Any], method: str) -> None:
    """Refuse fields of a config read from JSON that this version does not know, naming the closest valid one, and
    the version to install when ``peft_continual_version`` says a newer one wrote the file."""
    unknown = sorted(set(kwargs) - set(known))
    if not unknown:
        return
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        named.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    written_by = kwargs.get("peft_continual_version")
    if _newer(written_by):
        cause = (
            f"peft-continual {written_by} wrote it and this is {__version__}: upgrade with "
            f"pip install -U 'peft-continual>={written_by}'"
        )
    else:
        cause = "fix the name, or, if a newer peft-continual wrote it, upgrade peft-continual"
    raise ConfigError(
        f"unknown field(s) {', '.join(named)} in a {method} config: {cause} (PEFT alone would drop the field silently)"
    )


def _newer(version: Any) -> bool:
    """Is ``version`` (a config's ``peft_continual_version``) newer than this library?"""
    try:
        return isinstance(version, str) and Version(version) > Version(__version__)
    except InvalidVersion:
        return False


def _optional(value: Any, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _ids_by_task(value: Any) -> bool:
    """A dict of task name -> list of token ids (ints >= 0)."""
    return isinstance(value, dict) and all(
        isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
        for ids in value.values()
    )
