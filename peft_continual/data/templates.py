"""Task templates: NeMo's prompt-learning template language, parsed once and rendered per record.

A template such as ``"<|VIRTUAL_PROMPT_0|> {sentence} <|VIRTUAL_PROMPT_1|>sentiment: {label}"`` mixes literal
text, ``{field}`` slots filled from a record, and ``<|VIRTUAL_PROMPT_n|>`` markers where the learned virtual tokens
go. Marker ``n`` stands for ``virtual_token_splits[n]`` tokens; markers appear in order ``0, 1, ...`` so the
left-to-right order of virtual positions is the order of the task's virtual-token rows. Literal braces are written
``{{`` and ``}}``, as in ``str.format``.

Rendering yields *pieces* (text or virtual slots) instead of one string, because the tokenizer must know where the
virtual tokens stand, which text belongs to the ``truncate_field`` and where the answer begins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from peft_continual.errors import DuplicateTaskError, TemplateError, allowed

VIRTUAL_MARKER = "<|VIRTUAL_PROMPT_{}|>"
_TEMPLATE_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|<\|VIRTUAL_PROMPT_([^|]*)\|>|[{}]")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TruncationSide(str, Enum):
    """Which end of ``truncate_field`` loses tokens when a record is too long."""

    RIGHT = "right"
    LEFT = "left"


@dataclass(frozen=True)
class TextPiece:
    """Rendered text; ``field`` names the record field it came from (``None`` for template literals)."""

    text: str
    field: str | None = None
    is_answer: bool = False


@dataclass(frozen=True)
class VirtualSlot:
    """``count`` virtual tokens of marker ``marker``; they are the task's rows ``first_index .. first_index+count-1``."""

    marker: int
    count: int
    first_index: int


Piece = TextPiece | VirtualSlot


@dataclass
class TaskTemplate:
    """How one task's records become model input: NeMo's ``task_templates`` entry, validated.

    Examples:
        >>> t = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 10, [10], "label")
        >>> t.input_fields
        ('sentence',)
        >>> "".join(p.text for p in t.render({"sentence": "Up 5%."}, include_answer=False) if isinstance(p, TextPiece))
        ' Up 5%. sentiment:'
    """

    taskname: str = field(metadata={"help": "Name of the task; records carry it in their `taskname` field."})
    prompt_template: str = field(
        metadata={"help": "Text with `{field}` slots and `<|VIRTUAL_PROMPT_n|>` markers; it ends with the answer slot."}
    )
    total_virtual_tokens: int = field(
        metadata={"help": "Number of virtual tokens of the task (sum of the splits); 0 for a plain text prompt."}
    )
    virtual_token_splits: list[int] = field(
        metadata={"help": "Virtual tokens per marker, in marker order; one entry per `<|VIRTUAL_PROMPT_n|>`."}
    )
    answer_field: str | None = field(
        default=None, metadata={"help": "Field the model must produce; its slot ends the template."}
    )
    answer_only_loss: bool = field(
        default=True, metadata={"help": "Compute the loss on the answer tokens only (needs `answer_field`)."}
    )
    truncate_field: str | None = field(
        default=None,
        metadata={"help": "Field shortened when a record exceeds `max_length`; None means such records are errors."},
    )
    truncation_side: TruncationSide = field(
        default=TruncationSide.RIGHT,
        metadata={"help": "End of `truncate_field` that loses tokens: `right` (NeMo's choice) or `left`."},
    )
    init_text: str | None = field(
        default=None,
        metadata={
            "help": "Text whose token embeddings the task's virtual tokens start from (repeated to fill them); "
            "None: the adapter config's `init_text`, else the task name."
        },
    )

    def __post_init__(self) -> None:
        if not isinstance(self.virtual_token_splits, (list, tuple)):
            raise self._error(f"virtual_token_splits must be a list of counts, got {self.virtual_token_splits!r}")
        self.virtual_token_splits = list(self.virtual_token_splits)
        self._check_types()
        try:
            self.truncation_side = TruncationSide(self.truncation_side)
        except ValueError:
            raise self._error(
                f"truncation_side={self.truncation_side!r} is not one of {allowed(s.value for s in TruncationSide)}"
            ) from None
        self._parts = self._parse()
        self._check_splits()
        self._check_answer_and_truncation()

    # ------------------------------------------------------------------ parsing and checks
    def _error(self, message: str) -> TemplateError:
        return TemplateError(f"task {self.taskname!r}: {message} (prompt_template={self.prompt_template!r})")

    def _check_types(self) -> None:
        if not isinstance(self.taskname, str) or not self.taskname.strip():
            raise TemplateError(f"taskname must be a non-empty string, got {self.taskname!r}")
        if not isinstance(self.prompt_template, str):
            raise self._error(f"prompt_template must be a string, got {type(self.prompt_template).__name__}")
        if not isinstance(self.total_virtual_tokens, int) or isinstance(self.total_virtual_tokens, bool):
            raise self._error(f"total_virtual_tokens must be an integer, got {self.total_virtual_tokens!r}")
        if self.total_virtual_tokens < 0:
            raise self._error(f"total_virtual_tokens must be 0 or more, got {self.total_virtual_tokens}")
        if self.init_text is not None and (not isinstance(self.init_text, str) or not self.init_text.strip()):
            raise self._error(f"init_text must be a non-empty string or None, got {self.init_text!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.virtual_token_splits):
            raise self._error(f"virtual_token_splits must be positive integers, got {self.virtual_token_splits!r}")

    def _parse(self) -> list[str | tuple[str, Any]]:
        """Split the template into literals, ``("field", name)`` and ``("virtual", n)`` parts."""
        parts: list[str | tuple[str, Any]] = []
        literal, pos = "", 0
        for match in _TEMPLATE_TOKEN.finditer(self.prompt_template):
            literal += self.prompt_template[pos : match.start()]
            pos = match.end()
            token, field_name, marker = match.group(0), match.group(1), match.group(2)
            if token in ("{{", "}}"):
                literal += token[0]
                continue
            if token in ("{", "}"):
                raise self._error(
                    f"unmatched {token!r} at character {match.start()}; write {token * 2!r} for a literal"
                )
            if literal:
                parts.append(literal)
                literal = ""
            if field_name is not None:
                if not _FIELD_NAME.match(field_name):
                    raise self._error(f"{token!r} is not a valid field slot; use {{name}} with a Python identifier")
                parts.append(("field", field_name))
            else:
                if not marker.isdigit():
                    raise self._error(
                        f"{token!r} is not a virtual-token marker; write <|VIRTUAL_PROMPT_n|>, n = 0, 1, ..."
                    )
                parts.append(("virtual", int(marker)))
        literal += self.prompt_template[pos:]
        if literal:
            parts.append(literal)
        return parts

    def _check_splits(self) -> None:
        markers = [
            value for part in self._parts if isinstance(part, tuple) and part[0] == "virtual" for value in [part[1]]
        ]
        if markers != list(range(len(markers))):
            raise self._error(
                f"virtual-token markers must be <|VIRTUAL_PROMPT_0|>, <|VIRTUAL_PROMPT_1|>, ... each once and in "
                f"order; found {[VIRTUAL_MARKER.format(m) for m in markers]}"
            )
        if len(markers) != len(self.virtual_token_splits):
            raise self._error(
                f"the template has {len(markers)} <|VIRTUAL_PROMPT_n|> markers but virtual_token_splits="
                f"{self.virtual_token_splits} has {len(self.virtual_token_splits)} entries; give one count per marker"
            )
        if sum(self.virtual_token_splits) != self.total_virtual_tokens:
            raise self._error(
                f"virtual_token_splits={self.virtual_token_splits} sum to {sum(self.virtual_token_splits)}, "
                f"but total_virtual_tokens={self.total_virtual_tokens}"
            )

    def _check_answer_and_truncation(self) -> None:
        names = self.fields
        if len(set(names)) != len(names):
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise self._error(f"field(s) {repeated} appear more than once; each field may fill one slot")
        if self.answer_field is not None:
            if self.answer_field not in names:
                raise self._error(
                    f"answer_field={self.answer_field!r} is not a slot of the template; slots: {allowed(names)}"
                )
            if self._parts[-1] != ("field", self.answer_field):
                raise self._error(f"answer_field {{{self.answer_field}}} must end the template (nothing may follow it)")
        elif self.answer_only_loss:
            raise self._error("answer_only_loss=True needs an answer_field")
        if self.truncate_field is not None:
            if self.truncate_field not in names:
                raise self._error(
                    f"truncate_field={self.truncate_field!r} is not a slot of the template; slots: {allowed(names)}"
                )
            if self.truncate_field == self.answer_field:
                raise self._error(
                    f"truncate_field={self.truncate_field!r} is the answer_field; the answer is never cut"
                )

    # ------------------------------------------------------------------ public API
    @property
    def fields(self) -> tuple[str, ...]:
        """Every ``{field}`` slot of the template, in order (the answer last, if any)."""
        return tuple(part[1] for part in self._parts if isinstance(part, tuple) and part[0] == "field")

    @property
    def input_fields(self) -> tuple[str, ...]:
        """The fields a record needs at inference: all slots except the answer."""
        return tuple(name for name in self.fields if name != self.answer_field)

    def render(self, values: Mapping[str, str], include_answer: bool = True) -> list[Piece]:
        """Fill the template with a record's field values.

        Without the answer (inference), rendering stops where the answer begins. One space right before the answer
        slot belongs to the answer (``"sentiment: {label}"`` -> prompt ``"sentiment:"`` + answer ``" positive"``),
        because BPE and SentencePiece tokenizers attach a word's leading space to the word: a prompt that ended in a
        bare space token would differ from anything the model saw in pre-training.

        Args:
            values: field name -> text; must hold every slot in ``input_fields`` (and the answer if included).
            include_answer: render the answer slot (training) or stop before it (generation).

        Returns:
            The pieces in order; virtual slots carry their token counts and first row index.
        """
        pieces: list[Piece] = []
        first_index = 0
        for part in self._parts:
            if isinstance(part, str):
                pieces.append(TextPiece(part))
            elif part[0] == "virtual":
                count = self.virtual_token_splits[part[1]]
                pieces.append(VirtualSlot(marker=part[1], count=count, first_index=first_index))
                first_index += count
            elif part[1] == self.answer_field:
                moved = ""
                if pieces and isinstance(pieces[-1], TextPiece) and pieces[-1].text.endswith(" "):
                    last = pieces.pop()
                    if last.text[:-1]:
                        pieces.append(TextPiece(last.text[:-1], last.field))
                    moved = " "
                if include_answer:
                    pieces.append(TextPiece(moved + values[part[1]], part[1], is_answer=True))
            else:
                pieces.append(TextPiece(values[part[1]], part[1]))
        return pieces

    def without_virtual_tokens(self, prefix: str = "") -> TaskTemplate:
        """The same template with its markers removed and ``prefix`` text in front (prompt engineering, few-shot).

        ``prefix`` is literal text (braces are escaped here), e.g. rendered demonstrations.
        """
        text = re.sub(r"<\|VIRTUAL_PROMPT_\d+\|>", "", self.prompt_template)
        escaped = prefix.replace("{", "{{").replace("}", "}}")
        return TaskTemplate(
            **{
                **self.to_dict(),
                "prompt_template": escaped + text,
                "total_virtual_tokens": 0,
                "virtual_token_splits": [],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that ``from_dict`` turns back into an equal template (``init_text`` only when
        set, so templates written before it existed keep their dict)."""
        data = asdict(self)
        data["truncation_side"] = self.truncation_side.value
        if data["init_text"] is None:
            del data["init_text"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "template") -> TaskTemplate:
        """Build a template from a dict (NeMo's ``task_templates`` entries), refusing unknown keys."""
        if not isinstance(data, Mapping):
            raise TemplateError(f"{source}: a task template must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TemplateError(f"{source}: unknown template key(s) {unknown}; allowed: {allowed(known)}")
        required = {"taskname", "prompt_template", "total_virtual_tokens", "virtual_token_splits"}
        missing = sorted(required - set(data))
        if missing:
            raise TemplateError(f"{source} (task {data.get('taskname')!r}): missing template key(s) {missing}")
        try:
            return cls(**data)
        except TemplateError as error:
            raise TemplateError(f"{source}: {error}") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskTemplate) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable dataclass


def check_unique_tasknames(templates: Sequence[TaskTemplate]) -> dict[str, TaskTemplate]:
    """Index templates by task name, refusing duplicates."""
    by_name: dict[str, TaskTemplate] = {}
    for template in templates:
        if template.taskname in by_name:
            raise DuplicateTaskError(
                f"task {template.taskname!r} has more than one template; task names must be unique"
            )
        by_name[template.taskname] = template
    return by_name


def load_templates(source: str | Path | Sequence[Mapping[str, Any] | TaskTemplate]) -> list[TaskTemplate]:
    """Read task templates from a JSON or YAML file, or take a list of dicts or templates.

    A file holds either a list of templates or a mapping with a ``task_templates`` list (NeMo's config key).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TemplateError(f"{path}: cannot read templates: {error}") from None
        data = _parse_template_file(path, text)
        if isinstance(data, Mapping):
            data = data.get("task_templates")
        if not isinstance(data, list) or not data:
            raise TemplateError(f"{path}: expected a non-empty list of task templates (or a `task_templates` list)")
        entries = [(item, f"{path} task_templates[{i}]") for i, item in enumerate(data)]
    else:
        entries = [(item, f"templates[{i}]") for i, item in enumerate(source)]
    templates = [
        item if isinstance(item, TaskTemplate) else TaskTemplate.from_dict(item, source=where)
        for item, where in entries
    ]
    if not templates:
        raise TemplateError("no task templates given")
    check_unique_tasknames(templates)
    return templates


def _parse_template_file(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise TemplateError(f"{path}: not valid YAML: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise TemplateError(f"{path}:{error.lineno}: not valid JSON: {error.msg}") from None
