"""Restricted-choice scoring: pick, for each record, the candidate answer the model finds most likely.

Small models drift in free generation (a wrong format, a label in another language, no EOS), which hides what they
know. Scoring each candidate label by its log-likelihood given the prompt measures the knowledge alone, and cannot
produce an output outside the label set; reporting it next to generation separates "knows the answer" from "writes
it in the trained format".

A candidate's score is ``sum_t log p(answer_t | prompt, answer_<t)`` over its answer tokens exactly as training
labels them (``PromptTokenizer`` with ``answer_only_loss``): the answer's tokens and, when the tokenizer adds one,
the final EOS. Counting the EOS is what training teaches ("the answer ends here") and is what separates a label from
a longer one that starts with it; a candidate that is only the *start* of the answer (the intent of an intent-and-
slot answer) sets ``score_eos=False``. Sums are not length-normalised: candidates of one task are short labels, and
normalising would favour long labels whose later tokens are easy to predict. Ties go to the earlier candidate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord, template_for
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import IGNORE_INDEX, PromptTokenizer, TokenizedExample
from peft_continual.errors import ConfigError, PeftContinualError, UnknownTaskError, allowed
from peft_continual.evaluation.generate import pad_token_id_of
from peft_continual.evaluation.model_inputs import eval_mode, model_device, model_inputs


@dataclass(frozen=True)
class CandidateSet:
    """The candidate answers of one task, and whether the EOS after them is scored."""

    texts: tuple[str, ...]
    score_eos: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.texts, str):
            raise ConfigError(f"CandidateSet.texts must be a sequence of strings, got the string {self.texts!r}")
        object.__setattr__(self, "texts", tuple(self.texts))
        if not self.texts or not all(isinstance(t, str) and t for t in self.texts):
            raise ConfigError(f"CandidateSet.texts must be non-empty strings, at least one; got {self.texts!r}")


@dataclass
class RestrictedChoice:
    """The chosen candidate of one record and every candidate's summed log-probability (in candidate order)."""

    index: int
    text: str
    scores: list[float]


def answer_log_likelihoods(
    model: Any, batch: Mapping[str, Any], pass_virtual_tokens: bool | None = None
) -> torch.Tensor:
    """Sum of the log-probabilities of each row's labelled tokens, in one forward pass.

    Args:
        model: a causal LM returning logits aligned with ``input_ids`` (B, L, V).
        batch: a right-padded collated batch; ``labels`` (B, L) is ``IGNORE_INDEX`` except at the scored tokens.
        pass_virtual_tokens: see ``peft_continual.evaluation.model_inputs``.

    Returns:
        (B,) float32: ``sum_t log softmax(logits[b, t - 1])[labels[b, t]]`` over scored positions ``t``.
    """
    output = model(**model_inputs(batch, pass_virtual_tokens, model_device(model)))
    logits = output.logits if hasattr(output, "logits") else output[0]
    input_ids = batch["input_ids"]
    if logits.shape[:2] != input_ids.shape:
        raise PeftContinualError(
            f"the model returned logits of shape {tuple(logits.shape)} for input_ids {tuple(input_ids.shape)}; "
            "restricted scoring needs one logit row per input position"
        )
    targets = batch["labels"][:, 1:].to(logits.device)  # (B, L-1): token t is predicted at position t-1
    mask = targets != IGNORE_INDEX
    picked = logits[:, :-1][mask].float()  # (N, V), only the scored positions: the full (B, L, V) is never copied
    token_log_probs = torch.log_softmax(picked, dim=-1).gather(1, targets[mask].unsqueeze(1)).squeeze(1)  # (N,)
    rows = mask.nonzero()[:, 0]
    return torch.zeros(input_ids.shape[0], device=logits.device).index_add_(0, rows, token_log_probs)


def _scoring_tokenizer(prompt_tokenizer: PromptTokenizer, tasknames: Sequence[str]) -> PromptTokenizer:
    """A copy of ``prompt_tokenizer`` whose labels mark the answer tokens only (``answer_only_loss=True``)."""
    scorer = copy.copy(prompt_tokenizer)
    scorer.templates = dict(prompt_tokenizer.templates)
    for name in tasknames:
        template = prompt_tokenizer.templates.get(name)
        if template is None:
            raise UnknownTaskError(
                f"candidates given for task {name!r}, which has no template; known tasks: "
                f"{allowed(prompt_tokenizer.templates)}"
            )
        if template.answer_field is None:
            raise ConfigError(f"task {name!r}: its template has no answer_field, so candidates cannot be scored")
        scorer.templates[name] = TaskTemplate(**{**template.to_dict(), "answer_only_loss": True})
    return scorer


def _candidate_rows(
    scorer: PromptTokenizer, records: Sequence[TaskRecord], candidates: Mapping[str, CandidateSet]
) -> list[list[TokenizedExample] | None]:
    """Per record, one tokenized example per candidate (``None`` when a candidate is too long and skipped)."""
    rows: list[list[TokenizedExample] | None] = []
    for record in records:
        if record.taskname not in candidates:
            raise UnknownTaskError(
                f"{record.source}: no candidates for task {record.taskname!r}; tasks with candidates: "
                f"{allowed(candidates)}"
            )
        template = template_for(record, scorer.templates)
        candidate_set = candidates[record.taskname]
        examples = []
        for text in candidate_set.texts:
            filled = TaskRecord(record.taskname, {**record.fields, template.answer_field: text}, record.source)
            example = scorer(filled, include_answer=True)
            if example is None:
                break
            if scorer.add_eos and not candidate_set.score_eos:
                example.labels[-1] = IGNORE_INDEX  # the EOS the tokenizer appended
            examples.append(example)
        rows.append(examples if len(examples) == len(candidate_set.texts) else None)
    return rows


def score_candidates(
    model: Any,
    prompt_tokenizer: PromptTokenizer,
    records: Sequence[TaskRecord],
    candidates: Mapping[str, CandidateSet | Sequence[str]],
    *,
    batch_size: int = 16,
    pass_virtual_tokens: bool | None = None,
    progress: bool = True,
) -> list[RestrictedChoice | None]:
    """Score every candidate of every record's task and choose the most likely one.

    All (record, candidate) pairs are flattened, sorted by length and scored ``batch_size`` rows per forward, so the
    candidates of many records share one forward pass; the prompt goes through the same templates and tokenizer as
    in training.

    Args:
        model: any causal LM (plain ``transformers`` or our PEFT model).
        prompt_tokenizer: the ``PromptTokenizer`` of training (its ``add_eos`` decides whether EOS is scored).
        records: records of any mix of tasks; their answer fields are replaced by each candidate.
        candidates: ``{taskname: CandidateSet}`` (a plain list of strings means ``CandidateSet(list)``).
        batch_size: candidate rows per forward pass; memory grows with it times the vocabulary size.
        pass_virtual_tokens: see ``peft_continual.evaluation.model_inputs``.
        progress: show a tqdm bar (counts candidate rows).

    Returns:
        One ``RestrictedChoice`` per record, in order; ``None`` for a record whose candidate example is longer than
        ``max_length`` and skipped (``on_too_long="skip"``).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, eos_token_id=2, pad_token_id=2))
        >>> template = TaskTemplate("sentiment", "{sentence} sentiment: {label}", 0, [], "label")
        >>> records = [TaskRecord("sentiment", {"sentence": "Up 5%.", "label": "positive"}, "records[0]")]
        >>> choice = score_candidates(model, PromptTokenizer(tokenizer, [template]), records,
        ...                           {"sentiment": ["positive", "negative"]}, progress=False)[0]
        >>> choice.text in ("positive", "negative"), len(choice.scores)
        (True, 2)
    """
    sets = {name: c if isinstance(c, CandidateSet) else CandidateSet(tuple(c)) for name, c in candidates.items()}
    scorer = _scoring_tokenizer(prompt_tokenizer, list(sets))
    per_record = _candidate_rows(scorer, records, sets)
    flat = [(r, c, ex) for r, examples in enumerate(per_record) if examples for c, ex in enumerate(examples)]
    flat.sort(key=lambda item: -len(item[2].input_ids))
    collate = ContinualPromptCollator(pad_token_id=pad_token_id_of(prompt_tokenizer.tokenizer))
    scores = [[0.0] * len(examples) if examples else None for examples in per_record]
    with eval_mode(model), tqdm(total=len(flat), desc="score candidates", disable=not progress, unit="row") as bar:
        for start in range(0, len(flat), batch_size):
            chunk = flat[start : start + batch_size]
            batch = collate([example for _, _, example in chunk])
            sums = answer_log_likelihoods(model, batch, pass_virtual_tokens).tolist()
            for (r, c, _), value in zip(chunk, sums, strict=True):
                scores[r][c] = value
            bar.update(len(chunk))
    choices: list[RestrictedChoice | None] = []
    for record, row in zip(records, scores, strict=True):
        if row is None:
            choices.append(None)
            continue
        best = max(range(len(row)), key=lambda i: (row[i], -i))
        choices.append(RestrictedChoice(best, sets[record.taskname].texts[best], row))
    return choices
