"""Few-shot prompts: seeded choice, one per class, total k, instruction, and the plain template they produce."""

from collections import Counter

import pytest

from peft_continual.data.fewshot import (
    FewShotConfig,
    Sampling,
    fewshot_template,
    fewshot_templates,
    render_demonstration,
    select_demonstrations,
)
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, RecordError

from .shared_data import read_shared

SENTIMENT = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 10, [10], "label")
INTENT = TaskTemplate(
    "intent_and_slot", "<|VIRTUAL_PROMPT_0|> {utterance}\n<|VIRTUAL_PROMPT_1|>{label}", 6, [4, 2], "label"
)


def toy_records():
    rows = [
        ("Up {5%}.", "positive"),
        ("Down.", "negative"),
        ("Flat.", "neutral"),
        ("Rose.", "positive"),
        ("Fell.", "negative"),
        ("Same.", "neutral"),
        ("Gained.", "positive"),
    ]
    records = [
        TaskRecord("sentiment", {"sentence": s, "label": label}, f"train:{i + 1}") for i, (s, label) in enumerate(rows)
    ]
    return records + [TaskRecord("other", {"sentence": "x", "label": "positive"}, "train:99")]


def test_one_per_class_by_default_and_seeded():
    chosen = select_demonstrations(SENTIMENT, toy_records())
    assert Counter(r.fields["label"] for r in chosen) == {"positive": 1, "negative": 1, "neutral": 1}
    assert all(r.taskname == "sentiment" for r in chosen)
    again = select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(seed=0))
    assert [r.source for r in again] == [r.source for r in chosen]
    seeds = {
        tuple(r.source for r in select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(seed=s)))
        for s in range(10)
    }
    assert len(seeds) > 1  # the seed matters


def test_k_per_class_and_total():
    two_each = select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(k=2))
    assert Counter(r.fields["label"] for r in two_each) == {"positive": 2, "negative": 2, "neutral": 2}
    four = select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(k=4, sampling="total", seed=1))
    assert len(four) == 4 and len({r.source for r in four}) == 4
    assert select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(k=0)) == []
    # A class with fewer records than k gives all it has.
    assert len(select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(k=3))) == 3 + 2 + 2


def test_unshuffled_order_follows_sorted_classes():
    chosen = select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(shuffle=False))
    assert [r.fields["label"] for r in chosen] == ["negative", "neutral", "positive"]


def test_template_is_plain_and_holds_the_rendered_demonstrations():
    records = toy_records()
    config = FewShotConfig(shuffle=False, instruction="Classify the sentiment.", seed=0)
    template = fewshot_template(SENTIMENT, records, config)
    demos = select_demonstrations(SENTIMENT, records, config)
    assert template.total_virtual_tokens == 0 and template.virtual_token_splits == []
    assert template.taskname == "sentiment" and template.answer_field == "label"
    prompt = "".join(p.text for p in template.render({"sentence": "Q."}, include_answer=False))
    expected = (
        "Classify the sentiment.\n\n"
        + "".join(f" {r.fields['sentence']} sentiment: {r.fields['label']}\n\n" for r in demos)
        + " Q. sentiment:"
    )
    assert prompt == expected


def test_braces_in_demonstrations_are_literal():
    records = [r for r in toy_records() if r.source == "train:1"]
    template = fewshot_template(SENTIMENT, records)
    assert template.render({"sentence": "Q."}, include_answer=False)[0].text.startswith(" Up {5%}. sentiment: positive")


def test_render_demonstration_includes_the_answer():
    record = TaskRecord("intent_and_slot", {"utterance": "wake me up", "label": "Intent: alarm_set\nSlots: None"}, "x")
    assert render_demonstration(INTENT, record) == " wake me up\nIntent: alarm_set\nSlots: None"


def test_query_goes_through_the_prompt_tokenizer(smollm2_tokenizer):
    template = fewshot_template(SENTIMENT, toy_records())
    query = TaskRecord("sentiment", {"sentence": "Q.", "label": "neutral"}, "test:1")
    example = PromptTokenizer(smollm2_tokenizer, [template])(query, include_answer=False)
    assert example.virtual_positions == []
    assert smollm2_tokenizer.decode(example.input_ids) == "".join(
        p.text for p in template.render({"sentence": "Q."}, include_answer=False)
    )


def test_class_field_for_intent_tasks():
    records = read_shared("assistant_nlu", "train")
    config = FewShotConfig(class_field="intent", seed=3)
    chosen = select_demonstrations(INTENT, records, config)
    intents = {r.fields["intent"] for r in records}
    assert Counter(r.fields["intent"] for r in chosen) == dict.fromkeys(intents, 1)
    assert fewshot_templates([INTENT], records, config)[0].prompt_template.count("Intent: ") == len(intents)


def test_real_sentiment_data_one_per_class():
    records = read_shared("financial_phrasebank", "train")
    chosen = select_demonstrations(SENTIMENT, records, FewShotConfig(seed=0))
    assert sorted(r.fields["label"] for r in chosen) == ["negative", "neutral", "positive"]
    assert [r.source for r in chosen] == [r.source for r in select_demonstrations(SENTIMENT, records)]


def test_errors():
    with pytest.raises(RecordError, match="no training records of task 'sentiment'"):
        select_demonstrations(SENTIMENT, [r for r in toy_records() if r.taskname == "other"])
    with pytest.raises(ConfigError, match="k=8 but only 7 training records"):
        select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(k=8, sampling=Sampling.TOTAL))
    with pytest.raises(RecordError, match="train:1: task 'sentiment': class field 'intent' is missing"):
        select_demonstrations(SENTIMENT, toy_records(), FewShotConfig(class_field="intent"))
    with pytest.raises(ConfigError, match="sampling='each' is not one of"):
        FewShotConfig(sampling="each")
    with pytest.raises(ConfigError, match="k must be an integer >= 0"):
        FewShotConfig(k=-1)
    no_answer = TaskTemplate("sentiment", "{sentence}", 0, [], None, answer_only_loss=False)
    with pytest.raises(ConfigError, match="needs FewShotConfig.class_field"):
        select_demonstrations(no_answer, toy_records())


def test_config_parses_from_command_line_flags():
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(FewShotConfig).parse_args_into_dataclasses(
        ["--k", "3", "--sampling", "total", "--seed", "7", "--instruction", "Classify."]
    )
    assert config == FewShotConfig(k=3, sampling=Sampling.TOTAL, seed=7, instruction="Classify.")
