"""Label normalisation: a generated text becomes one label of the task's closed label set, or ``None``.

Small models rarely answer with the exact label string: they change case (``Positive``), add punctuation
(``positive.``), keep generating past the label (``positive\\nThe company...``) or, in a low-resource language, use a
grammatical variant (NeMo mapped Swedish ``positiva``/``positivt`` to ``positive``). Scoring the raw text would
measure formatting, not understanding; so both the generation and the label set are put through the same
normalisation and compared there. An output that matches no label is ``None``: it counts as wrong, and the report
says how many there were and shows a few, so a formatting problem is visible instead of silently lowering accuracy.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from peft_continual.data.records import TaskRecord
from peft_continual.errors import ConfigError, RecordError, allowed

_WHITESPACE = re.compile(r"\s+")


@dataclass
class LabelNormalization:
    """How one task's raw outputs are mapped onto its closed label set.

    The same steps are applied to every label, variant and output; an output is recognised when its normalised form
    equals the normalised form of a label or of a variant. Normalised forms of two different labels must differ.

    Examples:
        >>> norm = LabelNormalization(["positive", "negative", "neutral"], variants={"positiva": "positive"})
        >>> norm.normalize("  Positive.\\nbecause..."), norm.normalize("POSITIVA!"), norm.normalize("good")
        ('positive', 'positive', None)
    """

    labels: list[str] = field(metadata={"help": "The closed label set, in canonical form (as in the gold data)."})
    lowercase: bool = field(default=True, metadata={"help": "Compare case-insensitively (Unicode casefold)."})
    strip_whitespace: bool = field(
        default=True, metadata={"help": "Drop leading/trailing whitespace and collapse inner runs to one space."}
    )
    strip_punctuation: bool = field(
        default=True, metadata={"help": "Drop every Unicode punctuation character (`.`, `!`, `'`, `_`, `/` ...)."}
    )
    first_line_only: bool = field(
        default=True,
        metadata={"help": "Keep only the first non-blank line, because models often continue past the label."},
    )
    variants: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Extra spellings -> canonical label, e.g. {'positiva': 'positive'}; targets must be labels."},
    )
    words: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "Label words (LM-BFF): label -> the word the model reads and answers with, e.g. "
                  "{'positive': 'great', 'negative': 'terrible'}. Records' answers are shown as the words, generated "
                  "words normalise back to their label, restricted choice picks among the words."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if isinstance(self.labels, str) or not isinstance(self.labels, Iterable):
            raise ConfigError(f"LabelNormalization.labels must be a list of strings, got {self.labels!r}")
        self.labels = list(self.labels)
        if not self.labels:
            raise ConfigError("LabelNormalization.labels is empty; give the task's closed label set")
        bad = [label for label in self.labels if not isinstance(label, str)]
        if bad:
            raise ConfigError(f"LabelNormalization.labels must be strings; got {bad!r}")
        if not isinstance(self.variants, Mapping):
            raise ConfigError(f"LabelNormalization.variants must be a mapping variant -> label, got {self.variants!r}")
        self.variants = dict(self.variants)
        if not isinstance(self.words, Mapping) or not all(isinstance(w, str) and w for w in self.words.values()):
            raise ConfigError(f"LabelNormalization.words must map labels to non-empty words, got {self.words!r}")
        self.words = dict(self.words)
        unknown = sorted(set(self.words) - set(self.labels))
        if unknown:
            raise ConfigError(f"LabelNormalization.words: {unknown} are not labels; labels: {allowed(self.labels)}")
        self._lookup = self._build_lookup()

    def _build_lookup(self) -> dict[str, str]:
        """Normalised form -> canonical label, refusing forms that are empty or shared by two labels."""
        lookup: dict[str, str] = {}
        for label in self.labels:
            key = self.key(label)
            if not key:
                raise ConfigError(f"LabelNormalization.labels: label {label!r} normalises to an empty string")
            if key in lookup and lookup[key] != label:
                raise ConfigError(
                    f"LabelNormalization.labels: {lookup[key]!r} and {label!r} both normalise to {key!r}; "
                    "turn off lowercase/strip_punctuation or rename a label"
                )
            lookup[key] = label
        spellings = [("variants", variant, target) for variant, target in self.variants.items()]
        spellings += [("words", word, label) for label, word in self.words.items()]  # a word reads as its label
        for kind, variant, target in spellings:
            if target not in self.labels:
                raise ConfigError(
                    f"LabelNormalization.variants: {variant!r} maps to {target!r}, which is not a label; "
                    f"labels: {allowed(self.labels)}"
                )
            key = self.key(variant)
            if not key:
                raise ConfigError(f"LabelNormalization.{kind}: {variant!r} normalises to an empty string")
            if lookup.get(key, target) != target:
                raise ConfigError(
                    f"LabelNormalization.{kind}: {variant!r} -> {target!r} clashes with label {lookup[key]!r} "
                    f"(both normalise to {key!r})"
                )
            lookup[key] = target
        return lookup

    # ------------------------------------------------------------------ public API
    def word(self, label: str) -> str:
        """What the model reads and writes for ``label``: its label word, else the label itself."""
        return self.words.get(label, label)

    def key(self, text: str) -> str:
        """The normalised form of ``text`` used for matching (the configured steps, in a fixed order)."""
        if self.first_line_only:
            text = next((line for line in text.splitlines() if line.strip()), "")
        if self.strip_punctuation:
            text = "".join(char for char in text if not unicodedata.category(char).startswith("P"))
        if self.strip_whitespace:
            text = _WHITESPACE.sub(" ", text).strip()
        if self.lowercase:
            text = text.casefold()
        return text

    def normalize(self, raw: str) -> str | None:
        """The canonical label ``raw`` stands for, or ``None`` when it matches no label or variant."""
        return self._lookup.get(self.key(raw))

    def normalize_reference(self, raw: str, source: str = "reference", taskname: str | None = None) -> str:
        """Normalise a gold label, which must be in the label set (else the label set is wrong, not the model).

        Raises:
            RecordError: the gold label matches no label; the message names the record and the label set.
        """
        label = self.normalize(raw)
        if label is None:
            task = f"task {taskname!r}: " if taskname else ""
            raise RecordError(
                f"{source}: {task}gold label {raw!r} is not in the label set {allowed(self.labels)}; "
                "add it to LabelNormalization.labels or .variants"
            )
        return label

    @classmethod
    def from_records(cls, records: Iterable[TaskRecord], field_name: str, **options: Any) -> LabelNormalization:
        """The label set as the sorted distinct values of ``field_name`` in ``records`` (e.g. the train split).

        Raises:
            RecordError: a record lacks the field or it is not a string.
            ConfigError: no records were given.
        """
        labels = set()
        for record in records:
            value = record.fields.get(field_name)
            if not isinstance(value, str):
                raise RecordError(
                    f"{record.source}: task {record.taskname!r}: field {field_name!r} must be a label string, "
                    f"got {value!r}"
                )
            labels.add(value)
        return cls(labels=sorted(labels), **options)
