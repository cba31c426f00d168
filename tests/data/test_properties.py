"""Property-based: random templates, splits and texts raise only our errors and always place every virtual token."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import IGNORE_INDEX, PromptTokenizer
from peft_continual.errors import PeftContinualError

FIELDS = ("a", "b", "c")
texts = st.text(alphabet=st.sampled_from("ab xyz\n:é中🙂<|>_"), max_size=12)
rare_braces = st.sampled_from(["", "", "", "", "{{", "}}", "{", "}"])


@st.composite
def cases(draw):
    """A template with 0-3 markers and 0-3 fields in random order, literal text between them, the answer last."""
    slots = draw(
        st.permutations(
            ["VIRTUAL"] * draw(st.integers(0, 3)) + draw(st.permutations(FIELDS))[: draw(st.integers(0, 3))]
        )
    )
    template_text, marker = "", 0
    for slot in slots:
        template_text += draw(texts) + draw(rare_braces)
        if slot == "VIRTUAL":
            template_text += f"<|VIRTUAL_PROMPT_{marker}|>"
            marker += 1
        else:
            template_text += "{" + slot + "}"
    template_text += draw(texts) + draw(st.sampled_from(["", " ", ": "])) + "{answer}"
    splits = draw(st.lists(st.integers(1, 5), min_size=marker, max_size=marker))
    total = sum(splits) + draw(st.sampled_from([0, 0, 0, 0, 0, 1]))  # sometimes inconsistent on purpose
    values = {name: draw(texts) for name in (*FIELDS, "answer")}
    truncate = draw(st.sampled_from([None, *FIELDS]))
    max_length = draw(st.one_of(st.none(), st.integers(1, 60)))
    return template_text, total, splits, values, truncate, max_length


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_random_templates_raise_only_our_errors_and_place_every_virtual_token(smollm2_tokenizer, case):
    template_text, total, splits, values, truncate, max_length = case
    try:
        template = TaskTemplate("t", template_text, total, splits, "answer", truncate_field=truncate)
        tokenizer = PromptTokenizer(smollm2_tokenizer, [template], max_length=max_length)
        example = tokenizer(TaskRecord("t", values, "r[0]"))
    except PeftContinualError:
        return
    ids = example.input_ids
    assert len(example.virtual_positions) == template.total_virtual_tokens
    assert example.virtual_positions == sorted(set(example.virtual_positions))
    assert all(ids[p] == tokenizer.placeholder_token_id for p in example.virtual_positions)
    assert len(example.labels) == len(ids)
    assert all(example.labels[p] == IGNORE_INDEX for p in example.virtual_positions)
    assert ids[-1] == smollm2_tokenizer.eos_token_id
    if max_length is not None:
        assert len(ids) <= max_length
