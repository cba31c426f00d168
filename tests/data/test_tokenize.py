"""Tokenization with the real SmolLM2 tokenizer: positions, labels, truncation, too-long records."""

import pytest

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate, TextPiece, VirtualSlot
from peft_continual.data.tokenize import IGNORE_INDEX, PromptTokenizer
from peft_continual.errors import RecordTooLongError, UnknownTaskError

from .shared_data import read_shared

# (dataset folder, input field, template, total_virtual_tokens, splits): the acceptance templates of issue 2.
ACCEPTANCE_TEMPLATES = [
    ("financial_phrasebank", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 10, [10]),
    ("financial_phrasebank", "<|VIRTUAL_PROMPT_0|> {sentence} <|VIRTUAL_PROMPT_1|>sentiment:{label}", 16, [10, 6]),
    ("financial_phrasebank", "<|VIRTUAL_PROMPT_0|> {sentence}:{label}", 10, [10]),
    ("assistant_nlu", "<|VIRTUAL_PROMPT_0|> {utterance} \n<|VIRTUAL_PROMPT_1|>{label}", 12, [8, 4]),
    ("trec_lmbff", "Question: {sentence} <|VIRTUAL_PROMPT_0|> Answer type: {label}", 4, [4]),
]


def check_example(tokenizer, template, record, example):
    """Asserts the acceptance properties of one tokenized training example."""
    pieces = template.render(record.values_for(template))
    ids, labels, virtual = example.input_ids, example.labels, example.virtual_positions
    assert len(virtual) == template.total_virtual_tokens
    assert all(ids[p] == tokenizer.unk_token_id for p in virtual)  # the default placeholder
    assert ids[-1] == tokenizer.eos_token_id
    # Walk the rendered pieces: each virtual slot owns `count` consecutive positions at its place, and each run
    # of text between slots decodes back to exactly the rendered text.
    runs: list = []
    for piece in pieces:
        if isinstance(piece, VirtualSlot) or not runs or isinstance(runs[-1], VirtualSlot):
            runs.append(piece if isinstance(piece, VirtualSlot) else piece.text)
        else:
            runs[-1] += piece.text
    position = 0
    for run in runs:
        if isinstance(run, VirtualSlot):
            assert virtual[run.first_index : run.first_index + run.count] == list(range(position, position + run.count))
            position += run.count
        else:
            end = next((p for p in virtual if p > position), len(ids) - 1)
            assert tokenizer.decode(ids[position:end]) == run
            position = end
    assert position == len(ids) - 1
    # Labels are exactly the answer tokens followed by EOS.
    answer = next(p.text for p in pieces if isinstance(p, TextPiece) and p.is_answer)
    learned = [label for label in labels if label != IGNORE_INDEX]
    assert labels[-len(learned) :] == learned == ids[-len(learned) :]
    assert tokenizer.decode(learned[:-1]) == answer


@pytest.mark.parametrize(("folder", "prompt_template", "total", "splits"), ACCEPTANCE_TEMPLATES)
def test_acceptance_templates_tokenize_correctly(smollm2_tokenizer, folder, prompt_template, total, splits):
    records = read_shared(folder, "validation")[:25]
    template = TaskTemplate(records[0].taskname, prompt_template, total, splits, "label")
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [template])
    for record in records:
        example = prompt_tokenizer(record)
        check_example(smollm2_tokenizer, template, record, example)
        generation = prompt_tokenizer(record, include_answer=False)
        assert example.input_ids[: len(generation.input_ids)] == generation.input_ids
        assert set(generation.labels) == {IGNORE_INDEX}


THREE_MARKERS = TaskTemplate(
    "intent_and_slot",
    "<|VIRTUAL_PROMPT_0|>Utterance: {utterance}<|VIRTUAL_PROMPT_1|> Context: {context} <|VIRTUAL_PROMPT_2|>{label}",
    9,
    [3, 4, 2],
    "label",
    truncate_field="context",
)


@pytest.mark.parametrize("side", ["right", "left"])
def test_three_markers_with_truncation_cut_only_the_truncate_field(smollm2_tokenizer, side):
    template = TaskTemplate(**{**THREE_MARKERS.to_dict(), "truncation_side": side})
    record = read_shared("assistant_nlu", "validation")[0]
    context = " ".join(r.fields["utterance"] for r in read_shared("assistant_nlu", "validation")[1:40])
    record = TaskRecord(record.taskname, {**record.fields, "context": context}, record.source)
    full = PromptTokenizer(smollm2_tokenizer, [template])(record)
    example = PromptTokenizer(smollm2_tokenizer, [template], max_length=len(full.input_ids) - 50)(record)
    assert len(example.input_ids) <= len(full.input_ids) - 50
    assert example.truncated_tokens >= 50
    assert len(example.virtual_positions) == 9
    # The answer (and EOS) are untouched: same learned tokens as without truncation.
    assert [lab for lab in example.labels if lab != IGNORE_INDEX] == [lab for lab in full.labels if lab != IGNORE_INDEX]
    # The context is the text between marker 1's last virtual token and marker 2's first.
    between = example.input_ids[example.virtual_positions[6] + 1 : example.virtual_positions[7]]
    kept = smollm2_tokenizer.decode(between).removeprefix(" Context: ").removesuffix(" ")
    assert 0 < len(kept) < len(context)
    assert context.startswith(kept) if side == "right" else context.endswith(kept)


def test_too_long_without_truncate_field_names_record_and_task(smollm2_tokenizer):
    template = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 10, [10], "label")
    record = TaskRecord("sentiment", {"sentence": "word " * 50, "label": "neutral"}, "train.jsonl:12")
    with pytest.raises(RecordTooLongError, match=r"train\.jsonl:12: task 'sentiment': \d+ tokens > max_length=32"):
        PromptTokenizer(smollm2_tokenizer, [template], max_length=32)(record)
    skipping = PromptTokenizer(smollm2_tokenizer, [template], max_length=32, on_too_long="skip")
    short = TaskRecord("sentiment", {"sentence": "Up.", "label": "positive"}, "train.jsonl:13")
    result = skipping.tokenize_records([record, short])
    assert result.skipped == ["train.jsonl:12"]
    assert [e.source for e in result.examples] == ["train.jsonl:13"]


def test_truncation_that_cannot_fit_says_so(smollm2_tokenizer):
    record = TaskRecord("intent_and_slot", {"utterance": "hi " * 30, "context": "a b", "label": "x"}, "r[0]")
    with pytest.raises(RecordTooLongError, match=r"r\[0\]: task 'intent_and_slot': does not fit max_length=20"):
        PromptTokenizer(smollm2_tokenizer, [THREE_MARKERS], max_length=20)(record)


def test_full_loss_labels_every_real_token_but_not_virtual_ones(smollm2_tokenizer):
    template = TaskTemplate("s", "{x}<|VIRTUAL_PROMPT_0|> means {y}", 3, [3], "y", answer_only_loss=False)
    example = PromptTokenizer(smollm2_tokenizer, [template])(TaskRecord("s", {"x": "Sky", "y": "blue"}, "r"))
    real = [i for i, _ in enumerate(example.input_ids) if i not in example.virtual_positions]
    assert [example.labels[i] for i in real] == [example.input_ids[i] for i in real]
    assert all(example.labels[i] == IGNORE_INDEX for i in example.virtual_positions)


def test_unknown_task_is_reported_at_tokenization(smollm2_tokenizer):
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [THREE_MARKERS])
    with pytest.raises(UnknownTaskError, match=r"x\.jsonl:4: unknown task 'trec'; known tasks: 'intent_and_slot'"):
        prompt_tokenizer(TaskRecord("trec", {}, "x.jsonl:4"))


def test_two_templates_with_one_task_name_are_refused(smollm2_tokenizer):
    from peft_continual.errors import DuplicateTaskError

    other = THREE_MARKERS.without_virtual_tokens()
    with pytest.raises(DuplicateTaskError, match=r"\['intent_and_slot'\] have more than one template"):
        PromptTokenizer(smollm2_tokenizer, [THREE_MARKERS, other])
