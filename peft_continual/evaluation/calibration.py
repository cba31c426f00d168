"""Contextual calibration of restricted choice (Zhao et al., 2021, "Calibrate Before Use"; OpenPrompt's
``calibrate``): take the label prior the prompt has learned out of its answers.

A prompt trained for a few steps, or on skewed data, can learn the prior better than the task: the demo's
Norwegian ``sentiment_no`` answered ``neutral`` for 180 of 200 records and ``negative`` for none. Calibration asks
what the model answers when the input says nothing, and divides each candidate's probability by that:

    choice = argmax_c  log p(c | x) - log p_cf(c),    p_cf = mean over content-free inputs of softmax_c log p(c | x_cf)

The content-free inputs are the record's template with every input field set to one of ``CONTENT_FREE_TEXTS`` (the
paper's three), virtual tokens included: the prompt's own bias, measured through the prompt. Nothing is trained; one
correction per task, three extra scored records, and the candidates' order stays where the prior is uniform.

Not for a task with a neutral class: a content-free input is neutral, the prompt rightly says so, and dividing that
out removes the class (on ``sentiment_no`` it cost 16-25 points; docs: results, "Contextual calibration does not
rescue it").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from peft_continual.data.records import TaskRecord
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import PeftContinualError, UnknownTaskError, allowed
from peft_continual.evaluation.restricted import CandidateSet, RestrictedChoice, score_candidates

CONTENT_FREE_TEXTS = ("N/A", "", "[MASK]")
"""The inputs that carry no content, as in the paper: each fills every input field of the template once."""


def content_free_records(
    prompt_tokenizer: PromptTokenizer, taskname: str, texts: Sequence[str] = CONTENT_FREE_TEXTS
) -> list[TaskRecord]:
    """One record of ``taskname`` per content-free text, every input field of its template set to that text.

    Raises:
        UnknownTaskError: the task has no template.
    """
    template = prompt_tokenizer.templates.get(taskname)
    if template is None:
        raise UnknownTaskError(
            f"cannot calibrate task {taskname!r}: it has no template; known tasks: {allowed(prompt_tokenizer.templates)}"
        )
    return [
        TaskRecord(taskname, dict.fromkeys(template.input_fields, text), f"content-free input {text!r}")
        for text in texts
    ]


def content_free_log_prior(
    model: Any,
    prompt_tokenizer: PromptTokenizer,
    taskname: str,
    candidates: CandidateSet,
    *,
    texts: Sequence[str] = CONTENT_FREE_TEXTS,
    **scoring_kwargs: Any,
) -> torch.Tensor:
    """The log of the candidates' mean probability over content-free inputs: what the prompt answers on its own.

    Each content-free record's candidate scores (summed answer log-probabilities, as ``score_candidates`` gives) are
    normalised over the candidates, then averaged over the records.

    Args:
        model: the model evaluated (its prompts included).
        prompt_tokenizer: the ``PromptTokenizer`` of training.
        taskname: the task to calibrate.
        candidates: the task's candidate answers (``TaskEvaluation.candidates()``).
        texts: the content-free texts.
        **scoring_kwargs: passed on to ``score_candidates`` (``batch_size``, ``pass_virtual_tokens``).

    Returns:
        (C,) float32, ``log p_cf(c)`` in candidate order; ``logsumexp`` of it is 0.

    Raises:
        PeftContinualError: no content-free record fits the template's ``max_length``.
    """
    records = content_free_records(prompt_tokenizer, taskname, texts)
    choices = score_candidates(
        model, prompt_tokenizer, records, {taskname: candidates}, progress=False, **scoring_kwargs
    )
    if not any(choice is not None for choice in choices):
        raise PeftContinualError(f"task {taskname!r}: no content-free input fits the prompt; cannot calibrate")
    return mean_log_distribution(choices)


def mean_log_distribution(choices: Sequence[RestrictedChoice | None]) -> torch.Tensor:
    """(C,) float32: the log of the mean over ``choices`` (``None`` skipped) of the softmax over candidates of their
    scores. As ``calibration_prior: inputs`` (batch calibration, Zhou et al., 2023) it is the prior of a task's own
    evaluated records: their inputs, never their labels.

    Computed in log space and float64: a candidate 200 nats under the best (64 intents) keeps a finite log prior
    instead of exp() underflowing to 0 and its -inf winning every record.
    """
    scored = [torch.tensor(choice.scores, dtype=torch.float64) for choice in choices if choice is not None]
    if not scored:
        raise PeftContinualError("no scored record to take a prior from")
    log_probabilities = torch.stack([scores.log_softmax(dim=0) for scores in scored])  # (records, C)
    return (torch.logsumexp(log_probabilities, dim=0) - math.log(len(scored))).float()


def calibrate_choice(choice: RestrictedChoice, log_prior: torch.Tensor, candidates: CandidateSet) -> RestrictedChoice:
    """``choice`` chosen again after subtracting ``log_prior`` from its scores (ties to the earlier candidate).

    Examples:
        >>> prior = torch.tensor([0.8, 0.1, 0.1]).log()  # the prompt says `neutral` on its own
        >>> choice = RestrictedChoice(0, "neutral", [-0.5, -1.5, -2.5])
        >>> calibrate_choice(choice, prior, CandidateSet(("neutral", "negative", "positive"))).text
        'negative'
    """
    if len(choice.scores) != len(log_prior):
        raise PeftContinualError(f"{len(choice.scores)} candidate scores against a prior over {len(log_prior)}")
    adjusted = [score - prior for score, prior in zip(choice.scores, log_prior.tolist(), strict=True)]
    best = max(range(len(adjusted)), key=lambda i: (adjusted[i], -i))
    return RestrictedChoice(best, candidates.texts[best], adjusted)
