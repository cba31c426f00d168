"""Tokenization: a record rendered by its template becomes token ids, virtual-token positions and labels.

The text between two virtual-token markers is tokenized as one piece, so the tokens a model sees are the ones its
tokenizer would produce for that text. Where a virtual token stands, ``input_ids`` holds a placeholder id that the
model never looks at (it writes the task's prompt rows there); ``virtual_positions`` says where they are. The
prompt part of the last piece is tokenized on its own, so training and generation see the very same prompt tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from peft_continual.data.records import TaskRecord, template_for
from peft_continual.data.templates import Piece, TaskTemplate, TextPiece, TruncationSide, VirtualSlot
from peft_continual.errors import DuplicateTaskError, PeftContinualError, RecordTooLongError, allowed

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
_MAX_TRUNCATION_ROUNDS = 8


class OnTooLong(str, Enum):
    """What to do with a record longer than ``max_length`` whose template has no ``truncate_field``."""

    ERROR = "error"
    SKIP = "skip"


@dataclass
class TokenizedExample:
    """One record as token ids.

    ``virtual_positions[k]`` is the position of the task's virtual token ``k`` (left to right, in marker order);
    ``labels`` is ``-100`` wherever no loss is taken; ``truncated_tokens`` counts tokens cut from ``truncate_field``.
    """

    input_ids: list[int]
    labels: list[int]
    virtual_positions: list[int]
    taskname: str
    source: str
    truncated_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TokenizedRecords:
    """The examples of a tokenization run and the sources of the records skipped as too long."""

    examples: list[TokenizedExample]
    skipped: list[str]


class PromptTokenizer:
    """Turns ``TaskRecord``s into ``TokenizedExample``s with a Hugging Face tokenizer and the task templates.

    Args:
        tokenizer: a ``transformers`` tokenizer (fast or slow).
        templates: the task templates; a record's ``taskname`` selects its template.
        max_length: longest allowed example in tokens (virtual tokens, BOS and EOS included); ``None`` for no limit.
        add_eos: end training examples with the EOS token (learned as part of the answer) so generation stops.
        on_too_long: ``"error"`` (default) or ``"skip"`` (reported) for a too-long record with no ``truncate_field``.
        placeholder_token_id: id written at virtual positions; any valid id (the model ignores it). Defaults to the
            tokenizer's unk, pad or eos token.

    Examples:
        >>> pt = PromptTokenizer(tokenizer, [TaskTemplate("s", "<|VIRTUAL_PROMPT_0|>{x} is {y}", 2, [2], "y")])
        >>> ex = pt(TaskRecord("s", {"x": "Sky", "y": "blue"}, "doc"))
        >>> ex.virtual_positions
        [0, 1]
    """

    def __init__(
        self,
        tokenizer: Any,
        templates: Sequence[TaskTemplate],
        max_length: int | None = None,
        add_eos: bool = True,
        on_too_long: OnTooLong | str = OnTooLong.ERROR,
        placeholder_token_id: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        names = [template.taskname for template in templates]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DuplicateTaskError(
                f"task name(s) {repeated} have more than one template: a record selects its template by task name, so "
                "each task needs exactly one"
            )
        self.templates = {template.taskname: template for template in templates}
        self.max_length = max_length
        self.add_eos = add_eos
        try:
            self.on_too_long = OnTooLong(on_too_long)
        except ValueError:
            raise PeftContinualError(
                f"on_too_long={on_too_long!r} is not one of {allowed(o.value for o in OnTooLong)}"
            ) from None
        self.eos_token_id = tokenizer.eos_token_id
        if add_eos and self.eos_token_id is None:
            raise PeftContinualError("add_eos=True but the tokenizer has no eos_token; set add_eos=False")
        probe = tokenizer("a")["input_ids"]
        bos = tokenizer.bos_token_id
        self.bos_token_id = bos if bos is not None and probe[:1] == [bos] else None
        if placeholder_token_id is None:
            candidates = (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, 0)
            placeholder_token_id = next(c for c in candidates if c is not None)
        self.placeholder_token_id = placeholder_token_id

    # ------------------------------------------------------------------ public API
    def __call__(self, record: TaskRecord, include_answer: bool = True) -> TokenizedExample | None:
        """Tokenize one record; ``None`` only when it is too long and ``on_too_long="skip"``.

        Raises:
            UnknownTaskError, RecordError: see ``check_records``.
            RecordTooLongError: longer than ``max_length`` and cannot be truncated (``on_too_long="error"``).
        """
        template = template_for(record, self.templates)
        values = record.values_for(template, include_answer)
        example = self._encode(record, template, values, include_answer)
        if self.max_length is None or len(example.input_ids) <= self.max_length:
            return example
        if template.truncate_field is None:
            if self.on_too_long is OnTooLong.SKIP:
                return None
            raise RecordTooLongError(
                f"{record.source}: task {template.taskname!r}: {len(example.input_ids)} tokens > max_length="
                f"{self.max_length} and the template has no truncate_field; set truncate_field to one of "
                f"{allowed(template.input_fields)}, raise max_length, or pass on_too_long='skip'"
            )
        return self._truncate(record, template, values, include_answer, len(example.input_ids))

    def tokenize_records(self, records: Iterable[TaskRecord], include_answer: bool = True) -> TokenizedRecords:
        """Tokenize many records, collecting the ones skipped as too long (and logging how many)."""
        examples, skipped = [], []
        for record in records:
            example = self(record, include_answer)
            if example is None:
                skipped.append(record.source)
            else:
                examples.append(example)
        if skipped:
            logger.warning(
                "skipped %d record(s) longer than max_length=%s (first: %s)", len(skipped), self.max_length, skipped[0]
            )
        return TokenizedRecords(examples, skipped)

    # ------------------------------------------------------------------ encoding
    def _encode(
        self, record: TaskRecord, template: TaskTemplate, values: dict[str, str], include_answer: bool
    ) -> TokenizedExample:
        pieces = template.render(values, include_answer)
        input_ids: list[int] = []
        labels: list[int] = []
        virtual_positions: list[int] = []
        if self.bos_token_id is not None:
            input_ids.append(self.bos_token_id)
            labels.append(IGNORE_INDEX)
        for group in _split_at_virtual_slots(pieces):
            if isinstance(group, VirtualSlot):
                virtual_positions.extend(range(len(input_ids), len(input_ids) + group.count))
                input_ids.extend([self.placeholder_token_id] * group.count)
                labels.extend([IGNORE_INDEX] * group.count)
                continue
            prompt_ids, answer_ids = self._encode_text(group)
            input_ids.extend(prompt_ids + answer_ids)
            labels.extend([IGNORE_INDEX] * len(prompt_ids) if template.answer_only_loss else prompt_ids)
            labels.extend(answer_ids)
        if include_answer and self.add_eos:
            input_ids.append(self.eos_token_id)
            labels.append(self.eos_token_id)
        return TokenizedExample(input_ids, labels, virtual_positions, template.taskname, record.source)

    def _encode_text(self, pieces: list[TextPiece]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt text and of the answer (empty unless the answer ends this run of text)."""
        prompt_text = "".join(piece.text for piece in pieces if not piece.is_answer)
        answer_text = "".join(piece.text for piece in pieces if piece.is_answer)
        prompt_ids = self._ids(prompt_text)
        if not answer_text:
            return prompt_ids, []
        joined = self._ids(prompt_text + answer_text)
        if joined[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, joined[len(prompt_ids) :]
        # The prompt's last token merged with the answer's first: keep the prompt as generation will see it.
        return prompt_ids, self._ids(answer_text)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # ------------------------------------------------------------------ truncation
    def _truncate(
        self, record: TaskRecord, template: TaskTemplate, values: dict[str, str], include_answer: bool, length: int
    ) -> TokenizedExample:
        """Cut tokens from ``truncate_field`` until the example fits; the answer and virtual tokens are never cut.

        Cutting is done on the field's own tokens and decoded back to text, then the record is encoded again;
        because tokens can merge differently at the field's edges, this repeats until it fits.
        """
        name = template.truncate_field
        field_ids = self._ids(values[name])
        cut = 0
        for _ in range(_MAX_TRUNCATION_ROUNDS):
            cut += length - self.max_length
            if cut > len(field_ids):
                break
            kept = (
                field_ids[: len(field_ids) - cut]
                if template.truncation_side is TruncationSide.RIGHT
                else field_ids[cut:]
            )
            shortened = {**values, name: self.tokenizer.decode(kept).strip("\ufffd")}
            example = self._encode(record, template, shortened, include_answer)
            length = len(example.input_ids)
            if length <= self.max_length:
                example.truncated_tokens = cut
                return example
        raise RecordTooLongError(
            f"{record.source}: task {template.taskname!r}: does not fit max_length={self.max_length} even after "
            f"cutting truncate_field {name!r} ({len(field_ids)} tokens); the rest of the template, the answer and "
            f"{template.total_virtual_tokens} virtual tokens need more room: raise max_length"
        )


def _split_at_virtual_slots(pieces: list[Piece]) -> list[VirtualSlot | list[TextPiece]]:
    """Group consecutive text pieces, keeping virtual slots as separators: ``[text..], slot, [text..], ...``."""
    groups: list[VirtualSlot | list[TextPiece]] = []
    for piece in pieces:
        if isinstance(piece, VirtualSlot):
            groups.append(piece)
        elif groups and isinstance(groups[-1], list):
            groups[-1].append(piece)
        else:
            groups.append([piece])
    return groups
