"""The recipes' command line: ``--config FILE.yaml`` plus flags into typed dataclasses, and errors as messages.

Every recipe parses its arguments with ``HfArgumentParser`` (transformers' own), from a YAML file whose keys are the
flags' names (as in TRL), and ends a user's mistake with a one-line message instead of a traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from peft_continual.errors import ConfigError, PeftContinualError
from peft_continual.processes import end_processes

TRACEBACK_VARIABLE = "PEFT_CONTINUAL_TRACEBACK"

BASE_MODEL_ID_HELP = (
    "The Hub id that --model (a local folder) is a copy of: saved adapters and tables record it as their base, so "
    "another machine finds the model; None: the model's own name (`embedded` for the embedded model)."
)
"""Help of every recipe's ``--base_model_id`` (``load_base_model(base_model_id=...)``)."""


def parse_config_and_flags(dataclass_types: Sequence[type], argv: Sequence[str]) -> tuple[Any, ...]:
    """``HfArgumentParser`` over the dataclasses: ``--config FILE.yaml`` sets defaults (its keys are the flags'
    names, as in TRL), flags given on the command line override them.

    Raises:
        ConfigError: an unreadable config, a key or a flag that none of the dataclasses has.

    Examples:
        >>> from peft_continual.data.fewshot import FewShotConfig
        >>> parse_config_and_flags([FewShotConfig], ["--k", "2"])[0].k
        2
    """
    parser = HfArgumentParser(list(dataclass_types))
    defaults, argv, path = _read_config(argv)
    known = {f.name for cls in dataclass_types for f in fields(cls)}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    parser.set_defaults(**defaults)
    parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if parsed[-1]:
        raise ConfigError(f"unknown flag(s) {parsed[-1]}; --help lists the flags this recipe takes")
    return tuple(parsed[:-1])


def parse_and_pass_on(dataclass_type: type, argv: Sequence[str]) -> tuple[Any, list[str]]:
    """For a recipe that runs other recipes: its own arguments (``dataclass_type``) from ``--config FILE.yaml`` and
    flags, and every other key of the file and every other flag as flags to pass on to the recipes it runs.

    Examples:
        >>> from peft_continual.data.fewshot import FewShotConfig
        >>> parse_and_pass_on(FewShotConfig, ["--k", "2", "--max_steps", "5"])
        (FewShotConfig(k=2, ...), ['--max_steps', '5'])
    """
    defaults, argv, _ = _read_config(argv)
    own = {f.name for f in fields(dataclass_type)}
    passed = [flag for key, value in defaults.items() if key not in own for flag in _as_flags(key, value)]
    parser = HfArgumentParser([dataclass_type])
    parser.set_defaults(**{key: value for key, value in defaults.items() if key in own})
    parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    return parsed, passed + list(remaining)


def without_flags(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` less the flags ``--<name>`` of ``names`` and their values.

    Examples:
        >>> without_flags(["--max_steps", "5", "--k", "2", "--lora_target_modules", "q", "v"], ["max_steps"])
        ['--k', '2', '--lora_target_modules', 'q', 'v']
    """
    kept, skipping = [], False
    for item in argv:
        if item.startswith("--"):
            skipping = item[2:].split("=")[0] in names
        if not skipping:
            kept.append(item)
    return kept


def _read_config(argv: Sequence[str]) -> tuple[dict[str, Any], list[str], Path | None]:
    """The YAML file of ``--config`` (``{}`` without one) and the other arguments."""
    argv = list(argv)
    if "--config" not in argv:
        return {}, argv, None
    at = argv.index("--config")
    if at + 1 == len(argv):
        raise ConfigError("--config needs a YAML file")
    path = Path(argv[at + 1])
    try:
        defaults = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read the config: {error}") from None
    if not isinstance(defaults, dict):
        raise ConfigError(f"{path}: the config must be a mapping of flag names to values")
    return defaults, argv[:at] + argv[at + 2 :], path


def _as_flags(key: str, value: Any) -> list[str]:
    """A config value as command-line flags: lists as several values, booleans as true/false, None left out."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [f"--{key}", *map(str, value)]
    if isinstance(value, bool):
        return [f"--{key}", str(value).lower()]
    return [f"--{key}", str(value)]


def run_recipe(
    main: Callable[..., Any],
    dataclass_types: Sequence[type],
    argv: Sequence[str],
    parse: Callable[[Sequence[type], Sequence[str]], tuple[Any, ...]] = parse_config_and_flags,
) -> None:
    """A recipe's entry point: parse the config and flags (with ``parse``), show this library's log lines, run
    ``main``.

    A user mistake or a machine that cannot run the recipe (any ``PeftContinualError``: a bad config, a missing data
    file, a precision the device cannot run, a failed check before the run) ends the process with its message and
    exit status 2, not a traceback; ``PEFT_CONTINUAL_TRACEBACK=1`` shows the traceback too.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    library_logger = logging.getLogger("peft_continual")
    library_logger.addHandler(handler)
    library_logger.setLevel(logging.INFO)
    # PEFT 0.21.2 reads this deprecated transformers attribute on every wrap; not the user's to fix
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # Expected: a recipe wraps its one base model again for each round (prompt adapters inject no layers)
    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")
    try:
        main(*parse(dataclass_types, argv))
        end_processes()
    except PeftContinualError as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
