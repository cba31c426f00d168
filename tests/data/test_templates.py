"""TaskTemplate: parsing, rendering and every template mistake of DESIGN.md's catalogue."""

import json

import pytest

from peft_continual.data.templates import TaskTemplate, TextPiece, VirtualSlot, load_templates
from peft_continual.errors import DuplicateTaskError, TemplateError


def make(prompt_template, total=10, splits=(10,), answer_field="label", **kwargs):
    return TaskTemplate("sentiment", prompt_template, total, list(splits), answer_field, **kwargs)


def text_of(pieces):
    return "".join(p.text for p in pieces if isinstance(p, TextPiece))


def test_render_places_virtual_slots_in_marker_order_with_running_row_index():
    template = make("<|VIRTUAL_PROMPT_0|> {sentence} <|VIRTUAL_PROMPT_1|>sentiment:{label}", 16, [10, 6])
    pieces = template.render({"sentence": "Up.", "label": "positive"})
    slots = [p for p in pieces if isinstance(p, VirtualSlot)]
    assert slots == [VirtualSlot(0, 10, 0), VirtualSlot(1, 6, 10)]
    assert text_of(pieces) == " Up. sentiment:positive"
    assert pieces[-1] == TextPiece("positive", "label", is_answer=True)


def test_space_before_the_answer_moves_into_the_answer():
    template = make("<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}")
    training = template.render({"sentence": "Up.", "label": "positive"})
    inference = template.render({"sentence": "Up."}, include_answer=False)
    assert training[-1].text == " positive"
    assert text_of(inference) == " Up. sentiment:"
    assert text_of(training) == text_of(inference) + " positive"


def test_escaped_braces_are_literal_text():
    template = make("{{json}} <|VIRTUAL_PROMPT_0|>{sentence} -> {label}")
    assert text_of(template.render({"sentence": "a", "label": "b"})) == "{json} a -> b"
    assert template.fields == ("sentence", "label")


def test_dict_json_and_yaml_round_trip(tmp_path):
    template = make("<|VIRTUAL_PROMPT_0|> {sentence} {label}", truncate_field="sentence", truncation_side="left")
    assert TaskTemplate.from_dict(template.to_dict()) == template
    (tmp_path / "t.json").write_text(json.dumps({"task_templates": [template.to_dict()]}))
    assert load_templates(tmp_path / "t.json") == [template]
    (tmp_path / "t.yaml").write_text(
        "task_templates:\n"
        "  - taskname: sentiment\n"
        "    prompt_template: '<|VIRTUAL_PROMPT_0|> {sentence} {label}'\n"
        "    total_virtual_tokens: 10\n"
        "    virtual_token_splits: [10]\n"
        "    answer_field: label\n"
        "    truncate_field: sentence\n"
        "    truncation_side: left\n"
    )
    assert load_templates(tmp_path / "t.yaml") == [template]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} <|VIRTUAL_PROMPT_1|> {label}"},
            "has 2 <|VIRTUAL_PROMPT_n|> markers",
        ),
        ({"prompt_template": "{s} {label}"}, "has 0 <|VIRTUAL_PROMPT_n|> markers"),
        ({"splits": (4, 4), "prompt_template": "<|VIRTUAL_PROMPT_0|>{s}<|VIRTUAL_PROMPT_1|>{label}"}, "sum to 8"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {label} {s}"}, "must end the template"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}."}, "must end the template"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s}", "answer_field": "label"}, "not a slot of the template"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s}", "answer_field": None}, "answer_only_loss=True needs"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_1|> {s} {label}"}, "each once and in order"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_one|> {s} {label}"}, "not a virtual-token marker"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} } {label}"}, "unmatched '}'"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s t} {label}"}, "not a valid field slot"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {s} {label}"}, "appear more than once"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}", "truncate_field": "label"}, "is the answer_field"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}", "truncate_field": "x"}, "truncate_field='x'"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}", "truncation_side": "middle"}, "truncation_side"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}", "total": -1, "splits": ()}, "0 or more"),
        ({"prompt_template": "<|VIRTUAL_PROMPT_0|> {s} {label}", "total": 2, "splits": (2.0,)}, "positive integers"),
    ],
)
def test_bad_templates_raise_template_error_naming_the_task(kwargs, message):
    kwargs = dict(kwargs)
    args = {k: kwargs.pop(k) for k in ("prompt_template", "total", "splits", "answer_field") if k in kwargs}
    with pytest.raises(TemplateError, match="sentiment") as info:
        make(**args, **kwargs)
    assert message in str(info.value)


def test_from_dict_names_unknown_and_missing_keys():
    with pytest.raises(TemplateError, match=r"unknown template key\(s\) \['virtual_tokens'\]"):
        TaskTemplate.from_dict({"taskname": "a", "virtual_tokens": 3})
    with pytest.raises(TemplateError, match=r"task 'a'.*missing template key\(s\) \['prompt_template'"):
        TaskTemplate.from_dict({"taskname": "a", "total_virtual_tokens": 3, "virtual_token_splits": [3]})


def test_template_file_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"taskname": "a",\n  oops}\n]')
    with pytest.raises(TemplateError, match=r"bad\.json:3: not valid JSON"):
        load_templates(path)
    path.write_text(
        '{"task_templates": [{"taskname": "a", "prompt_template": "{x}", "total_virtual_tokens": 1, '
        '"virtual_token_splits": [1], "answer_field": "x"}]}'
    )
    with pytest.raises(TemplateError, match=r"bad\.json task_templates\[0\]: task 'a'"):
        load_templates(path)


def test_duplicate_task_names_are_refused():
    template = make("<|VIRTUAL_PROMPT_0|> {s} {label}")
    with pytest.raises(DuplicateTaskError, match="'sentiment' has more than one template"):
        load_templates([template, template.to_dict()])


def test_without_virtual_tokens_gives_a_plain_prompt_with_a_literal_prefix():
    template = make("<|VIRTUAL_PROMPT_0|>{sentence} <|VIRTUAL_PROMPT_1|>is {label}", 5, [2, 3])
    plain = template.without_virtual_tokens(prefix="{demo} is positive\n")
    assert plain.total_virtual_tokens == 0 and plain.virtual_token_splits == []
    pieces = plain.render({"sentence": "Up", "label": "negative"})
    assert text_of(pieces) == "{demo} is positive\nUp is negative"
    assert not any(isinstance(p, VirtualSlot) for p in pieces)
