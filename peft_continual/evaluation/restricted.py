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

The prompt is shared: a candidate's example is split before its first scored token into a prompt (everything the
answer is conditioned on, virtual tokens included) and a continuation (the answer tokens and EOS). Candidates whose
prompts are the same token ids (all candidates of a record, as a rule, and duplicate records) share one prompt row:
prompts run once, left-padded and batched, through the model's usual call (virtual tokens placed by the model) with
``use_cache=True``; then the continuations of each prompt, packed into one candidate tree that shares their common
prefixes (``peft_continual.evaluation.candidate_tree``), run in one forward from its KV cache. The prompt of a candidate
is taken from its own with-answer example, so it is exactly the context the full forward would score against even
where the tokenizer encodes the prompt differently with an answer behind it (truncation cuts more of a record
for a longer candidate, for instance): such a candidate simply gets a prompt row of its own. A row that has no
prompt before its first scored token (no BOS, empty prompt) is scored by one full forward, as a whole; so is every
row of a model whose attention takes no 4D mask (flash attention).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from peft_continual.data.collate import ContinualPromptCollator, PaddingSide
from peft_continual.data.records import TaskRecord, template_for
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import IGNORE_INDEX, PromptTokenizer, TokenizedExample
from peft_continual.errors import ConfigError, PeftContinualError, UnknownTaskError, allowed
from peft_continual.evaluation.candidate_tree import CandidateTree, accepts_tree_masks, build_tree, tree_inputs
from peft_continual.evaluation.generate import pad_token_id_of
from peft_continual.evaluation.model_inputs import eval_mode, model_device, model_inputs
from peft_continual.evaluation.prompt_sharing import Continuation, SharingPlan, share_prompts

TREE_TOKENS_PER_PROMPT = 64
"""Candidate-tree tokens per forward, in units of ``batch_size``: a tree forward's logits are (P, K, V), so prompts
with big trees (142 tokens for 64 intents) run fewer to a chunk."""

CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"
"""Name of the KV cache in a model's arguments and outputs: transformers 5.24 renamed ``past_key_values`` to ``cache``."""


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
    return _sum_log_probs(logits[:, :-1], batch["labels"][:, 1:])  # token t is predicted at position t-1


def _sum_log_probs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probabilities of the ``targets`` that are not ``IGNORE_INDEX``.

    Args:
        logits: (B, T, V), ``logits[b, t]`` predicts ``targets[b, t]``.
        targets: (B, T) long, ``IGNORE_INDEX`` where nothing is scored.

    Returns:
        (B,) float32.
    """
    targets = targets.to(logits.device)
    mask = targets != IGNORE_INDEX
    picked = logits[mask]  # (N, V), only the scored positions: the full (B, T, V) is never copied
    log_probs = _log_probs_of_rows(picked, torch.arange(len(picked), device=picked.device), targets[mask])
    rows = mask.nonzero()[:, 0]
    return torch.zeros(targets.shape[0], device=logits.device).index_add_(0, rows, log_probs)


def _log_probs_of_rows(logits: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits[rows[s]])[targets[s]]`` in float32, each distinct row normalised once: the candidates of
    a prompt share its last position and the tree's prefix nodes (64 intents: ~2.5x fewer softmaxes, which took a
    quarter of the scoring time).

    Args:
        logits: (R, V).
        rows: (S,) long, the row of ``logits`` that predicts each target.
        targets: (S,) long token ids.

    Returns:
        (S,) float32.
    """
    distinct, inverse = torch.unique(rows, return_inverse=True)
    normaliser = torch.logsumexp(logits[distinct].float(), dim=-1)  # (U,)
    return logits[rows, targets].float() - normaliser[inverse]


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


def _logits_of(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def _tree_sums(
    model: Any,
    next_logits: torch.Tensor,
    prompt_mask: torch.Tensor,
    cache: Any,
    trees: Sequence[CandidateTree],
    rows: Sequence[tuple[int, int, Continuation]],
    pad_token_id: int,
) -> torch.Tensor:
    """Summed log-probabilities of continuation rows: the first token from its prompt's last logits, the others
    from one forward of every prompt's candidate tree on top of the prompts' KV cache (consumed).

    Args:
        model: the causal LM that produced ``cache``.
        next_logits: (P, V) each prompt's logits at its last position (they predict the first answer token).
        prompt_mask: (P, Lp) attention mask of the left-padded prompts, on the CPU.
        cache: the prompts' KV cache (P rows, Lp positions).
        trees: the candidate tree of each prompt row.
        rows: N triples (prompt row, the row's index among its prompt's continuations, continuation).
        pad_token_id: id written after short trees (masked out).

    Returns:
        (N,) float32.
    """
    slots = torch.tensor([slot for slot, _, _ in rows], dtype=torch.long, device=next_logits.device)  # (N,)
    firsts = torch.tensor([row.labels[0] for _, _, row in rows], dtype=torch.long, device=next_logits.device)  # (N,)
    scored_first = firsts != IGNORE_INDEX
    sums = torch.zeros(len(rows), device=next_logits.device)
    sums[scored_first] = _log_probs_of_rows(next_logits, slots[scored_first], firsts[scored_first])
    scored = [
        (i, slot, trees[slot].paths[k][t - 1], label)
        for i, (slot, k, row) in enumerate(rows)
        for t, label in enumerate(row.labels)
        if t > 0 and label != IGNORE_INDEX
    ]
    if not scored:
        return sums
    device = model_device(model)
    inputs = tree_inputs(trees, prompt_mask, pad_token_id, model.get_input_embeddings().weight.dtype)
    output = model(**{k: v.to(device) for k, v in inputs.items()}, **{CACHE_ARGUMENT: cache}, use_cache=True)
    logits = _logits_of(output)  # (P, K, V)
    if logits.shape[:2] != inputs["input_ids"].shape:
        raise PeftContinualError(
            f"the model returned logits of shape {tuple(logits.shape)} for candidate trees of "
            f"{tuple(inputs['input_ids'].shape)} tokens; restricted scoring needs one logit row per input position"
        )
    flat = logits.reshape(-1, logits.shape[-1])  # (P * K, V)
    width = logits.shape[1]
    index = torch.tensor([slot * width + node for _, slot, node, _ in scored], device=logits.device)
    targets = torch.tensor([label for *_, label in scored], dtype=torch.long, device=logits.device)
    log_probs = _log_probs_of_rows(flat, index, targets)  # (S,) only the scored nodes
    owners = torch.tensor([i for i, *_ in scored], dtype=torch.long, device=sums.device)
    return sums.index_add_(0, owners, log_probs.to(sums.device))


def _prompt_chunks(order: Sequence[int], tree_sizes: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive prompts of ``order``: at most ``batch_size`` of them, and (where possible) at most
    ``batch_size * TREE_TOKENS_PER_PROMPT`` tree tokens once padded to the chunk's largest tree."""
    budget = batch_size * TREE_TOKENS_PER_PROMPT
    chunk: list[int] = []
    widest = 0
    for g in order:
        if chunk and (len(chunk) == batch_size or (len(chunk) + 1) * max(widest, tree_sizes[g]) > budget):
            yield chunk
            chunk, widest = [], 0
        chunk.append(g)
        widest = max(widest, tree_sizes[g])
    if chunk:
        yield chunk


def _score_shared(
    model: Any,
    plan: SharingPlan,
    pad_token_id: int,
    batch_size: int,
    pass_virtual_tokens: bool | None,
) -> Iterator[tuple[list[Continuation], list[float]]]:
    """Run the shared prompts in chunks (see ``_prompt_chunks``), then the chunk's candidate trees from their cache.

    Prompts are left-padded (every prompt ends in the last column) with positions counted from each row's first
    real token, and go through ``model_inputs`` like any batch, so virtual tokens are placed by the model. Only the
    last position's logits are asked for (``logits_to_keep=1``). The trees hold no virtual token and are run like
    ``generate``'s decoding steps: ``input_ids``, mask, positions and the cache.

    Yields:
        (continuations, their summed log-probabilities), one pair per chunk.
    """
    device = model_device(model)
    collate = ContinualPromptCollator(pad_token_id=pad_token_id, padding_side=PaddingSide.LEFT)
    by_prompt: list[list[Continuation]] = [[] for _ in plan.prompts]
    for row in plan.continuations:
        by_prompt[row.prompt].append(row)
    trees = [build_tree([row.input_ids for row in rows]) for rows in by_prompt]
    order = sorted(range(len(plan.prompts)), key=lambda g: -len(plan.prompts[g].input_ids))
    for chunk in _prompt_chunks(order, [len(tree) for tree in trees], batch_size):
        batch = collate([plan.prompts[g] for g in chunk])
        mask = batch["attention_mask"]  # (P, Lp)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (P, Lp): left padding must not shift the positions
        inputs = model_inputs(batch, pass_virtual_tokens, device)
        output = model(**inputs, position_ids=positions.to(device), use_cache=True, logits_to_keep=1)
        logits = _logits_of(output)
        if logits.shape[0] != len(chunk) or logits.dim() != 3:
            raise PeftContinualError(
                f"the model returned logits of shape {tuple(logits.shape)} for prompts {tuple(mask.shape)}"
            )
        cache = getattr(output, CACHE_ARGUMENT, None)
        if cache is None:
            raise PeftContinualError(
                f"{type(model).__name__} returned no KV cache with use_cache=True; restricted scoring "
                "continues the answers from the prompts' KV cache"
            )
        rows = [(slot, k, row) for slot, g in enumerate(chunk) for k, row in enumerate(by_prompt[g])]
        sums = _tree_sums(model, logits[:, -1], mask, cache, [trees[g] for g in chunk], rows, pad_token_id)
        yield [row for _, _, row in rows], sums.tolist()


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

    Each distinct prompt runs once (``batch_size`` prompts per forward, sorted by length), and its candidates' answer
    tokens are scored from its KV cache in one forward of their candidate tree (each shared prefix once), so a prompt
    costs one pass however many candidates it has; the prompt goes through the same templates and tokenizer as in
    training. The scores equal those of one full forward per candidate (see the module docstring).

    Args:
        model: any causal LM (plain ``transformers`` or our PEFT model).
        prompt_tokenizer: the ``PromptTokenizer`` of training (its ``add_eos`` decides whether EOS is scored).
        records: records of any mix of tasks; their answer fields are replaced by each candidate.
        candidates: ``{taskname: CandidateSet}`` (a plain list of strings means ``CandidateSet(list)``).
        batch_size: prompts per forward, fewer when their candidate trees hold more than ``batch_size *
            TREE_TOKENS_PER_PROMPT`` tokens in all; memory grows with it times the vocabulary size and the tree size
            (tree logits) and the prompt length (KV cache).
        pass_virtual_tokens: see ``peft_continual.evaluation.model_inputs``.
        progress: show a tqdm bar (counts candidate rows).

    Returns:
        One ``RestrictedChoice`` per record, in order; ``None`` for a record whose candidate example is longer than
        ``max_length`` and skipped (``on_too_long="skip"``).

    Examples:
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
    if accepts_tree_masks(model):
        plan = share_prompts(per_record)
    else:  # e.g. flash attention, which takes no 4D mask: one full forward per candidate
        plan = SharingPlan(
            full=[(r, c, ex) for r, examples in enumerate(per_record) for c, ex in enumerate(examples or ())]
        )
    pad_token_id = pad_token_id_of(prompt_tokenizer.tokenizer)
    collate = ContinualPromptCollator(pad_token_id=pad_token_id)
    full = sorted(plan.full, key=lambda item: -len(item[2].input_ids))
    scores = [[0.0] * len(examples) if examples else None for examples in per_record]
    total = len(plan.continuations) + len(full)
    with eval_mode(model), tqdm(total=total, desc="score candidates", disable=not progress, unit="row") as bar:
        for rows, sums in _score_shared(model, plan, pad_token_id, batch_size, pass_virtual_tokens):
            for row, value in zip(rows, sums, strict=True):
                scores[row.record][row.candidate] = value
            bar.update(len(rows))
        for start in range(0, len(full), batch_size):
            chunk = full[start : start + batch_size]
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
