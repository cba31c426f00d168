"""Intent-and-slot parsing: hand-made cases (duplicates, commas, parentheses, malformed) and the real data."""

from collections import Counter

import pytest

from peft_continual.evaluation.slots import (
    format_intent_and_slots,
    intent_answer_prefix,
    parse_intent_and_slots,
    parse_slot_list,
)

from ..data.shared_data import read_shared


def test_well_formed_answer():
    parsed = parse_intent_and_slots("Intent: alarm_set\nSlots: date(this week), time(five am)")
    assert parsed.intent == "alarm_set"
    assert parsed.slots == Counter({("date", "this week"): 1, ("time", "five am"): 1})
    assert not parsed.malformed


def test_slots_none_is_empty_and_well_formed():
    parsed = parse_intent_and_slots("Intent: qa_factoid\nSlots: None")
    assert parsed.intent == "qa_factoid"
    assert parsed.slots == Counter()
    assert not parsed.malformed


def test_duplicates_are_kept_as_a_multiset():
    parsed = parse_intent_and_slots("Intent: play_music\nSlots: artist_name(abba), artist_name(abba)")
    assert parsed.slots == Counter({("artist_name", "abba"): 2})


def test_values_with_commas_and_parentheses_survive():
    text = "Intent: PlayMusic\nSlots: artist(shawn , marguerite og della), song(foo (live)), weather/attribute(x.y@z)"
    parsed = parse_intent_and_slots(text)
    assert parsed.slots == Counter(
        {("artist", "shawn , marguerite og della"): 1, ("song", "foo (live)"): 1, ("weather/attribute", "x.y@z"): 1}
    )
    assert not parsed.malformed


def test_whitespace_is_collapsed_and_keys_are_case_insensitive():
    parsed = parse_intent_and_slots("  intent :  alarm_set \n slots:  time( five   am ) ,date(today)  ")
    assert parsed.intent == "alarm_set"
    assert parsed.slots == Counter({("time", "five am"): 1, ("date", "today"): 1})


def test_text_after_the_slot_line_is_ignored():
    parsed = parse_intent_and_slots("Intent: alarm_set\nSlots: time(five am)\nIntent: other\nSlots: None")
    assert (parsed.intent, parsed.slots, parsed.malformed) == ("alarm_set", Counter({("time", "five am"): 1}), False)


def test_intent_and_slots_on_one_line():
    parsed = parse_intent_and_slots("Intent: alarm_set Slots: time(five am)")
    assert parsed.intent == "alarm_set"
    assert parsed.slots == Counter({("time", "five am"): 1})


@pytest.mark.parametrize(
    ("text", "intent", "slots", "problem"),
    [
        ("Intent: alarm_set\nSlots: date(today), time(five", "alarm_set", {("date", "today"): 1}, "no closing ')'"),
        ("Intent: alarm_set", "alarm_set", {}, "no 'Slots:'"),
        ("Slots: time(five am)", None, {("time", "five am"): 1}, "no 'Intent:'"),
        ("Intent: \nSlots: None", None, {}, "empty intent"),
        ("Intent: x\nSlots:", "x", {}, "empty slot list"),
        ("Intent: x\nSlots: five am", "x", {}, "no type(value) slot"),
        ("Intent: x\nSlots: oops date(today)", "x", {}, "no type(value) slot"),
        ("Intent: x\nSlots: oops, date(today)", "x", {("date", "today"): 1}, "ignored text before the first slot"),
        ("Intent: x\nSlots: date(), time(5)", "x", {("time", "5"): 1}, "empty value"),
        ("", None, {}, "no 'Intent:'"),
        ("positive positive positive", None, {}, "no 'Intent:'"),
    ],
)
def test_malformed_answers_keep_what_can_be_recovered(text, intent, slots, problem):
    parsed = parse_intent_and_slots(text)
    assert parsed.intent == intent
    assert parsed.slots == Counter(slots)
    assert parsed.malformed
    assert any(problem in p for p in parsed.problems), parsed.problems


def test_parse_slot_list_none_variants():
    assert parse_slot_list("None") == (Counter(), [])
    assert parse_slot_list(" none ") == (Counter(), [])


def test_format_is_the_inverse_of_parse():
    pairs = [("date", "this week"), ("time", "five am"), ("date", "this week")]
    text = format_intent_and_slots("alarm_set", pairs)
    assert text == "Intent: alarm_set\nSlots: date(this week), time(five am), date(this week)"
    assert parse_intent_and_slots(text).slots == Counter(pairs)
    assert format_intent_and_slots("x", []) == "Intent: x\nSlots: None"
    assert intent_answer_prefix("x") == "Intent: x\n"


@pytest.mark.parametrize("folder", ["assistant_nlu", "xsid_da"])
def test_every_gold_label_of_the_shared_data_parses_to_its_metadata(folder):
    for split in ("train", "validation", "test"):
        for record in read_shared(folder, split):
            parsed = parse_intent_and_slots(record.fields["label"])
            expected = Counter((slot["type"], " ".join(slot["value"].split())) for slot in record.fields["slots"])
            assert (parsed.intent, parsed.slots, parsed.problems) == (record.fields["intent"], expected, []), (
                record.source
            )
