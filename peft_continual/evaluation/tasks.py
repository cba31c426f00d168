"""Per-task evaluation settings: what kind of answer a task has, its label set, and its generation budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from peft_continual.errors import ConfigError, allowed
from peft_continual.evaluation.labels import LabelNormalization
from peft_continual.evaluation.restricted import CandidateSet
from peft_continual.evaluation.slots import intent_answer_prefix

CALIBRATION_PRIORS = ("content_free", "inputs")
"""Where ``TaskEvaluation.calibrate`` takes its prior from (``peft_continual.evaluation.calibration``)."""


class TaskKind(str, Enum):
    """How a task's answers are scored."""

    CLASSIFICATION = "classification"
    """One label of a closed set: accuracy and macro-F1."""
    INTENT_AND_SLOT = "intent_and_slot"
    """``Intent: x\\nSlots: type(value), ...``: intent accuracy, slot precision/recall/F1, exact match."""


@dataclass
class TaskEvaluation:
    """How one task is evaluated.

    For a classification task ``labels`` is required: it is the closed label set generations are normalised onto and
    the candidates of restricted scoring. For an intent-and-slot task it is optional and applies to the *intent*:
    with it, generated intents are normalised (outside the set -> wrong, counted) and restricted scoring, if turned on,
    chooses among the intents; without it, intents are compared as generated (whitespace-collapsed) and restricted
    scoring is impossible, because free-form slot lists have no closed set of candidates.

    Restricted scoring costs one pass over the prompt and one over the candidates' token tree: 3 tokens for a
    sentiment task, but about 140 for the 64 intents of ``assistant_nlu`` (several times the answer's own length), which
    is why ``restricted`` defaults to on for classification and off for intent-and-slot tasks.

    Examples:
        >>> task = TaskEvaluation("sentiment", labels={"labels": ["positive", "negative", "neutral"]})
        >>> task.kind.value, task.candidates().texts
        ('classification', ('positive', 'negative', 'neutral'))
    """

    taskname: str = field(metadata={"help": "The task's name, as in the records and templates."})
    kind: TaskKind = field(default=TaskKind.CLASSIFICATION, metadata={"help": "`classification` or `intent_and_slot`."})
    labels: LabelNormalization | None = field(
        default=None,
        metadata={"help": "Label set and normalisation (a dict of LabelNormalization fields is accepted)."},
    )
    max_new_tokens: int = field(
        default=16, metadata={"help": "Most tokens generated for an answer (EOS stops earlier)."}
    )
    restricted: bool | None = field(
        default=None,
        metadata={
            "help": "Run restricted-choice scoring; default: on for classification, off for intent_and_slot (it "
            "scores a token tree of all the intents for each record)."
        },
    )
    calibrate: bool = field(
        default=False,
        metadata={
            "help": "Also report restricted choice after contextual calibration (`calibrated` in the metrics): each "
            "candidate's probability divided by its mean probability for content-free inputs ('N/A', '', '[MASK]' "
            "in the template's input fields), which takes the label prior the prompt learned out of its answers. "
            "Needs restricted scoring."
        },
    )
    calibration_prior: str = field(
        default="content_free",
        metadata={
            "help": "The prior `calibrate` divides out: `content_free` (the mean answer to content-free inputs; "
            "wrong for a task with a neutral class, which such inputs deserve) or `inputs` (batch calibration: the "
            "mean answer over the task's own evaluated records, their inputs only, never their labels)."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.taskname, str) or not self.taskname:
            raise ConfigError(f"TaskEvaluation.taskname must be a non-empty string, got {self.taskname!r}")
        try:
            self.kind = TaskKind(self.kind)
        except ValueError:
            raise ConfigError(
                f"task {self.taskname!r}: kind={self.kind!r} is not one of {allowed(k.value for k in TaskKind)}"
            ) from None
        if isinstance(self.labels, Mapping):
            self.labels = LabelNormalization(**self.labels)
        if self.labels is not None and not isinstance(self.labels, LabelNormalization):
            raise ConfigError(f"task {self.taskname!r}: labels must be a LabelNormalization, got {self.labels!r}")
        if self.kind is TaskKind.CLASSIFICATION and self.labels is None:
            raise ConfigError(
                f"task {self.taskname!r} is a classification task without a label set; give "
                "labels=LabelNormalization([...]) (e.g. LabelNormalization.from_records(train, 'label'))"
            )
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ConfigError(f"task {self.taskname!r}: max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if self.restricted is None:
            self.restricted = self.kind is TaskKind.CLASSIFICATION
        if self.restricted and self.labels is None:
            raise ConfigError(
                f"task {self.taskname!r}: restricted=True needs labels (the intents to choose among); give "
                "labels=LabelNormalization([...]) or set restricted=False"
            )
        if not isinstance(self.calibrate, bool):
            raise ConfigError(f"task {self.taskname!r}: calibrate must be true or false, got {self.calibrate!r}")
        if self.calibration_prior not in CALIBRATION_PRIORS:
            raise ConfigError(
                f"task {self.taskname!r}: calibration_prior={self.calibration_prior!r} is not one of "
                f"{allowed(CALIBRATION_PRIORS)}"
            )
        if self.calibrate and not self.restricted:
            raise ConfigError(
                f"task {self.taskname!r}: calibrate=True corrects restricted choice, which is off for the task; "
                "set restricted=True or calibrate=False"
            )

    def candidates(self) -> CandidateSet | None:
        """The answers restricted scoring chooses among, or ``None`` when it is off for the task."""
        if not self.restricted:
            return None
        if self.kind is TaskKind.CLASSIFICATION:  # what the model writes: the label words where there are
            return CandidateSet(tuple(self.labels.word(label) for label in self.labels.labels))
        return CandidateSet(tuple(intent_answer_prefix(intent) for intent in self.labels.labels), score_eos=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskEvaluation:
        """Build from a config mapping (YAML), refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"task evaluation {data.get('taskname')!r}: unknown key(s) {unknown}; allowed: {allowed(known)}"
            )
        return cls(**data)
