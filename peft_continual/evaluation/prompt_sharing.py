"""Restricted scoring's plan: candidate rows split into shared prompts and short continuations.

All candidates of a record (and duplicate records) usually share their prompt token for token; running that prompt
once and scoring each candidate's few answer tokens from its KV cache is what makes restricted choice cheap. This
module only plans the split; ``peft_continual.evaluation.restricted`` runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from peft_continual.data.tokenize import IGNORE_INDEX, TokenizedExample


@dataclass
class Continuation:
    """A candidate row scored from a shared prompt: its tokens after the prompt, up to its last scored one."""

    record: int
    candidate: int
    prompt: int  # index into SharingPlan.prompts
    input_ids: list[int]  # (T,) the answer tokens (and EOS) that follow the prompt
    labels: list[int]  # (T,) the token where it is scored, else IGNORE_INDEX


@dataclass
class SharingPlan:
    """Candidate rows split into shared prompts + continuations, and the rows scored by a full forward instead."""

    prompts: list[TokenizedExample] = field(default_factory=list)
    continuations: list[Continuation] = field(default_factory=list)
    full: list[tuple[int, int, TokenizedExample]] = field(default_factory=list)  # (record, candidate, example)


def share_prompts(per_record: Sequence[Sequence[TokenizedExample] | None]) -> SharingPlan:
    """Split each candidate example before its first scored token; candidates with equal prompts share one.

    The prompt is cut from the candidate's own (with-answer) example, so the context of every scored token is the
    one a full forward over that example gives. Prompts are equal when their task, token ids and virtual positions
    are. A row with nothing before its first scored token, or (never with a valid template) a virtual token after
    it, is left to a full forward.
    """
    plan = SharingPlan()
    index: dict[tuple[str, tuple[int, ...], tuple[int, ...]], int] = {}
    for r, examples in enumerate(per_record):
        for c, example in enumerate(examples or ()):
            scored = [t for t, label in enumerate(example.labels) if label != IGNORE_INDEX]
            start = scored[0] if scored else 0
            if start == 0 or any(position >= start for position in example.virtual_positions):
                plan.full.append((r, c, example))
                continue
            key = (example.taskname, tuple(example.input_ids[:start]), tuple(example.virtual_positions))
            if key not in index:
                index[key] = len(plan.prompts)
                prompt = TokenizedExample(
                    example.input_ids[:start],
                    [IGNORE_INDEX] * start,
                    list(example.virtual_positions),
                    example.taskname,
                    example.source,
                )
                plan.prompts.append(prompt)
            end = scored[-1] + 1
            plan.continuations.append(
                Continuation(r, c, index[key], example.input_ids[start:end], example.labels[start:end])
            )
    return plan
