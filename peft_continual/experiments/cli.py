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

TRACEBACK_VARIABLE = "PEFT_CONTINUAL_TRACEBACK"


def parse_config_and_flags(dataclass_types: Sequence[type], argv: Sequence[str]) -> tuple[Any, ...]:
    """``HfArgumentParser`` over the dataclasses: ``--config FILE.yaml`` sets defaults (its keys are the flags'
    names, as in TRL), flags given on the command line override them.

    Examples:
        >>> from peft_continual.data.fewshot import FewShotConfig
        >>> parse_config_and_flags([FewShotConfig], ["--k", "2"])[0].k
        2
    """
    parser = HfArgumentParser(list(dataclass_types))
    argv = list(argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 == len(argv):
            raise ConfigError("--config needs a YAML file")
        path = Path(argv[at + 1])
        try:
            defaults = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read the config: {error}") from None
        known = {f.name for cls in dataclass_types for f in fields(cls)}
        unknown = sorted(set(defaults) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {unknown}")
        parser.set_defaults(**defaults)
        argv = argv[:at] + argv[at + 2 :]
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def run_recipe(main: Callable[..., Any], dataclass_types: Sequence[type], argv: Sequence[str]) -> None:
    """A recipe's entry point: parse the config and flags, show this library's log lines, run ``main``.

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
        main(*parse_config_and_flags(dataclass_types, argv))
    except PeftContinualError as error:
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
