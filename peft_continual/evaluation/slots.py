"""Parsing NeMo's intent-and-slot answers: ``Intent: <intent>\\nSlots: <type>(<value>), ...`` or ``Slots: None``.

Generations are parsed leniently because a metric should measure what the model got right, not whether it got the
whole format right: a missing ``Slots`` line still yields the intent, and a slot list cut off by ``max_new_tokens``
still yields its complete slots. Whatever had to be dropped or guessed is recorded in ``problems`` so the report
can count malformed outputs.

What the shared data holds (checked on every split of ``assistant_nlu`` and ``xsid_da``): slot types are
``[A-Za-z0-9_/]``; values contain spaces, ``'``, ``.``, ``@``, ``:``, ``-``, ``/``, ``&`` and, in ``xsid_da``, commas
(``shawn , marguerite og della``), but never parentheses; the same ``(type, value)`` pair can occur twice in one
answer (4 utterances in ``assistant_nlu``), so slots are a multiset. A slot therefore starts only at ``type(`` at the
start of the list or after a comma, and its value runs to the last ``)`` before the next slot start: commas and
parentheses inside values survive, unless a value itself contains ``, word(``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

_INTENT = re.compile(r"intent\s*:[ \t]*(?P<intent>.*?)\s*(?=slots\s*:|\n|$)", re.IGNORECASE)
_SLOTS = re.compile(r"slots\s*:[ \t]*(?P<slots>[^\n]*)", re.IGNORECASE)
_SLOT_START = re.compile(r"(?:^|,)\s*(?P<type>[\w./-]+)\s*\(")
_WHITESPACE = re.compile(r"\s+")

SlotPair = tuple[str, str]


@dataclass
class IntentSlots:
    """An answer's intent and its multiset of ``(type, value)`` slot pairs.

    ``intent`` is ``None`` when no intent could be read. ``problems`` lists what was malformed (empty for a
    well-formed answer, including ``Slots: None``).
    """

    intent: str | None
    slots: Counter[SlotPair] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def malformed(self) -> bool:
        """Whether anything had to be dropped or was missing."""
        return bool(self.problems)


def _clean(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def parse_slot_list(text: str) -> tuple[Counter[SlotPair], list[str]]:
    """Parse ``type(value), type(value)`` (or ``None``) into a multiset of pairs and a list of problems.

    A slot with no closing ``)`` (typically cut off by ``max_new_tokens``) or an empty value is dropped and reported,
    because its value cannot be trusted; text before the first slot is ignored and reported.

    Examples:
        >>> pairs, problems = parse_slot_list("person(meredith , betty og erika), time(five")
        >>> dict(pairs), problems
        ({('person', 'meredith , betty og erika'): 1}, ["slot 'time' has no closing ')'; dropped"])
    """
    text = text.strip()
    pairs: Counter[SlotPair] = Counter()
    problems: list[str] = []
    if not text:
        return pairs, ["empty slot list (expected 'None' or type(value), ...)"]
    if text.casefold() == "none":
        return pairs, problems
    starts = list(_SLOT_START.finditer(text))
    if not starts:
        return pairs, [f"no type(value) slot in {text!r}"]
    if starts[0].start() > 0:
        problems.append(f"ignored text before the first slot: {text[: starts[0].start()]!r}")
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[match.end() : end].rstrip()
        slot_type = match.group("type")
        if not body.endswith(")"):
            problems.append(f"slot {slot_type!r} has no closing ')'; dropped")
            continue
        value = _clean(body[:-1])
        if not value:
            problems.append(f"slot {slot_type!r} has an empty value; dropped")
            continue
        pairs[(slot_type, value)] += 1
    return pairs, problems


def parse_intent_and_slots(text: str) -> IntentSlots:
    """Parse a (generated or gold) intent-and-slot answer.

    The first ``Intent:`` and the first ``Slots:`` are used (keys are case-insensitive, either may be missing);
    anything a model generates after the slot line is ignored.

    Examples:
        >>> parsed = parse_intent_and_slots("Intent: alarm_set\\nSlots: date(this week), time(five am)")
        >>> parsed.intent, sorted(parsed.slots), parsed.malformed
        ('alarm_set', [('date', 'this week'), ('time', 'five am')], False)
    """
    problems: list[str] = []
    intent_match = _INTENT.search(text)
    intent = _clean(intent_match.group("intent")) if intent_match else ""
    if not intent:
        problems.append("no 'Intent:'" if intent_match is None else "empty intent")
    slots_match = _SLOTS.search(text)
    if slots_match is None:
        problems.append("no 'Slots:'")
        slots: Counter[SlotPair] = Counter()
    else:
        slots, slot_problems = parse_slot_list(slots_match.group("slots"))
        problems.extend(slot_problems)
    return IntentSlots(intent or None, slots, problems)


def format_intent_and_slots(intent: str, slots: list[SlotPair]) -> str:
    """The answer text the shared data uses for ``intent`` and ``slots`` (the inverse of a clean parse)."""
    slot_text = ", ".join(f"{slot_type}({value})" for slot_type, value in slots) or "None"
    return f"Intent: {intent}\nSlots: {slot_text}"


def intent_answer_prefix(intent: str) -> str:
    """The start of an answer up to the line break after the intent: what restricted intent scoring compares.

    Scoring the line break (not just the intent) scores "the intent ends here" for every candidate, as the EOS does
    for a label, so a short intent that is a prefix of a longer one is not favoured.
    """
    return f"Intent: {intent}\n"
