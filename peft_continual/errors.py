"""The exceptions a user can meet, each a ``ValueError`` whose message says where and what.

Every message names the place (``file:line`` for JSONL, ``records[i]`` for in-memory records), the task and the
field involved, and the allowed values when there is a closed set. Nothing here is raised for a programming error of
the library itself.
"""

from __future__ import annotations

from collections.abc import Iterable


class PeftContinualError(ValueError):
    """Base class of every user-facing error of peft-continual."""


class TemplateError(PeftContinualError):
    """A task template is malformed (markers, splits, fields, answer or truncation settings)."""


class DuplicateTaskError(PeftContinualError):
    """Two templates (of a config or a ``PromptTokenizer``), two task evaluations, or a template and a frozen table
    entry share a task name."""


class RecordError(PeftContinualError):
    """A record cannot be read or does not fit its task's template, or a batch is malformed (empty; ``tasknames`` not
    a list of one task name per row, e.g. a single string)."""


class UnknownTaskError(RecordError):
    """A record or a batch row names a task that no template (or table entry) knows."""


class RecordTooLongError(RecordError):
    """A tokenized record exceeds ``max_length`` and its template has no ``truncate_field``."""


class ConfigError(PeftContinualError):
    """A configuration value is invalid (method, evaluation or recipe settings), or a change of tasks is not allowed now."""


class PrecisionError(ConfigError):
    """The precision asked for cannot run on this device; the message says why and what to use instead."""


class PreflightError(PeftContinualError):
    """The recipe's short check of the whole path (load, a training step of every round, a generate) failed on this
    machine, before any long work; the message names the stage, the device and precision, and the cause."""


class AdapterFileError(PeftContinualError):
    """A file of a saved adapter is missing, damaged, cut short, or a pickle (never opened); the message names the file
    and what to do."""


class TableMismatchError(PeftContinualError):
    """A prompt table was trained on a different base model than the one it is being loaded into."""


class CardMetadataError(PeftContinualError):
    """A table's model card has metadata the Hub would refuse (``peft_continual.card_metadata``); the message names
    the file and each field."""


def allowed(values: Iterable[str]) -> str:
    """Format a closed set of allowed values for an error message, sorted and quoted."""
    return ", ".join(repr(v) for v in sorted(values)) or "(none)"
