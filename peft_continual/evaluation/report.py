"""Per-task evaluation: generation -> normalisation -> metrics, and restricted choice -> metrics, in one call.

All records, of any mix of tasks, go through generation and scoring together (mixed-task batches, as the continual
model serves them); only the metrics are split by task. Records whose prompt does not fit ``max_length`` (with
``on_too_long="skip"``) are left out of a task's metrics and counted in ``num_skipped``.

Under ``accelerate launch``/``torchrun`` the records are split between the processes and the answers gathered
(``peft_continual.processes.across_processes``): N processes evaluate N times faster and return the same metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from peft_continual.data.records import TaskRecord, template_for
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, DuplicateTaskError, UnknownTaskError, allowed
from peft_continual.evaluation.calibration import calibrate_choice, content_free_log_prior, mean_log_distribution
from peft_continual.evaluation.generate import generate_answers
from peft_continual.evaluation.metrics import classification_metrics, intent_slot_metrics
from peft_continual.evaluation.restricted import RestrictedChoice, score_candidates
from peft_continual.evaluation.slots import IntentSlots, parse_intent_and_slots
from peft_continual.evaluation.tasks import TaskEvaluation, TaskKind
from peft_continual.processes import across_processes, is_main_process


@dataclass
class TaskResult:
    """One task's metrics and per-record predictions.

    ``metrics`` is a plain JSON-ready dict: ``{"generation": {...}, "restricted": {...}, "calibrated": {...}}`` (a
    mode that was not run, or has no candidates, is absent; ``calibrated`` where ``TaskEvaluation.calibrate``, with
    the ``prior`` it divided by and where it came from, ``prior_from``). ``predictions`` has one dict per record: ``source``, ``reference``,
    ``generated`` (raw text), ``prediction`` (normalised label, or intent), ``restricted`` (chosen candidate) and,
    when calibrated, ``calibrated``.
    """

    taskname: str
    kind: TaskKind
    metrics: dict[str, Any] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"taskname": self.taskname, "kind": self.kind.value, "metrics": self.metrics}


def _first_distinct(texts: Sequence[str], count: int) -> list[str]:
    return list(dict.fromkeys(texts))[:count]


def _classification_generation(
    task: TaskEvaluation, texts: Sequence[str], references: Sequence[str], num_shown: int
) -> tuple[dict[str, Any], list[str | None]]:
    labels = task.labels
    predictions = [labels.normalize(text) for text in texts]
    metrics = classification_metrics(predictions, references, labels.labels)
    outside = [text for text, prediction in zip(texts, predictions, strict=True) if prediction is None]
    metrics["outside_label_set_examples"] = _first_distinct(outside, num_shown)
    return metrics, predictions


def _intent_slot_generation(
    task: TaskEvaluation, texts: Sequence[str], references: Sequence[IntentSlots], num_shown: int
) -> tuple[dict[str, Any], list[str | None]]:
    parsed = [parse_intent_and_slots(text) for text in texts]
    outside: list[str] = []
    if task.labels is not None:
        for text, item in zip(texts, parsed, strict=True):
            if item.intent is not None:
                canonical = task.labels.normalize(item.intent)
                if canonical is None:
                    outside.append(text)
                item.intent = canonical
    metrics: dict[str, Any] = intent_slot_metrics(parsed, references)
    if task.labels is not None:
        metrics["num_intent_outside_label_set"] = len(outside)
        metrics["intent_outside_label_set_examples"] = _first_distinct(outside, num_shown)
    metrics["malformed_examples"] = _first_distinct(
        [t for t, p in zip(texts, parsed, strict=True) if p.malformed], num_shown
    )
    return metrics, [item.intent for item in parsed]


def _restricted_metrics(task: TaskEvaluation, choices: Sequence[RestrictedChoice], references: Sequence) -> dict:
    chosen = [task.labels.labels[choice.index] for choice in choices]
    if task.kind is TaskKind.CLASSIFICATION:
        metrics = classification_metrics(chosen, references, task.labels.labels)
        metrics.pop("num_outside_label_set")  # always 0: a restricted choice is a label by construction
        return metrics
    correct = sum(label == reference.intent for label, reference in zip(chosen, references, strict=True))
    return {
        "intent_accuracy": correct / len(references),
        "num_examples": len(references),
        "num_intent_correct": correct,
    }


def _scored_choice_metrics(
    task: TaskEvaluation, choices: Sequence[RestrictedChoice | None], references: Sequence
) -> dict[str, Any]:
    """``_restricted_metrics`` of the records that were scored, and ``num_skipped`` for those that were not (too
    long): restricted choice, and restricted choice calibrated."""
    kept = [i for i, choice in enumerate(choices) if choice is not None]
    metrics: dict[str, Any] = {"num_examples": 0}
    if kept:
        metrics = _restricted_metrics(task, [choices[i] for i in kept], [references[i] for i in kept])
    metrics["num_skipped"] = len(choices) - len(kept)
    return metrics


def _references(task: TaskEvaluation, records: Sequence[TaskRecord], prompt_tokenizer: PromptTokenizer) -> list:
    """Gold answers: canonical labels (classification) or parsed intent and slots (intent normalised if a set)."""
    references = []
    for record in records:
        template = template_for(record, prompt_tokenizer.templates)
        if template.answer_field is None:
            raise ConfigError(f"task {task.taskname!r}: its template has no answer_field, so it cannot be scored")
        raw = record.values_for(template)[template.answer_field]
        if task.kind is TaskKind.CLASSIFICATION:
            references.append(task.labels.normalize_reference(raw, record.source, task.taskname))
            continue
        parsed = parse_intent_and_slots(raw)
        if task.labels is not None and parsed.intent is not None:
            parsed.intent = task.labels.normalize_reference(parsed.intent, record.source, task.taskname)
        references.append(parsed)
    return references


def _index_tasks(tasks: Sequence[TaskEvaluation] | Mapping[str, TaskEvaluation]) -> dict[str, TaskEvaluation]:
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    by_name: dict[str, TaskEvaluation] = {}
    for task in items:
        task = task if isinstance(task, TaskEvaluation) else TaskEvaluation.from_dict(task)
        if task.taskname in by_name:
            raise DuplicateTaskError(f"task {task.taskname!r} has more than one TaskEvaluation")
        by_name[task.taskname] = task
    return by_name


def evaluate_tasks(
    model: Any,
    prompt_tokenizer: PromptTokenizer,
    records: Sequence[TaskRecord],
    tasks: Sequence[TaskEvaluation] | Mapping[str, TaskEvaluation],
    *,
    generation: bool = True,
    restricted: bool = True,
    batch_size: int = 8,
    scoring_batch_size: int = 16,
    pass_virtual_tokens: bool | None = None,
    generation_kwargs: Mapping[str, Any] | None = None,
    num_shown: int = 5,
    progress: bool = True,
) -> dict[str, TaskResult]:
    """Evaluate records of several tasks at once; metrics per task.

    Args:
        model: any causal LM: our PEFT model, or a plain ``transformers`` model with plain-text templates (few-shot).
        prompt_tokenizer: tokenizer and templates of the records' tasks (the ones used in training).
        records: test records of any mix of the tasks, with their gold answers.
        tasks: one ``TaskEvaluation`` per task (or a dict of its fields).
        generation: run free generation (greedy, up to each task's ``max_new_tokens``).
        restricted: run restricted-choice scoring (for the tasks whose ``TaskEvaluation.restricted`` is on).
        batch_size: rows per ``generate`` call.
        scoring_batch_size: candidate rows per forward pass of restricted scoring.
        pass_virtual_tokens: whether the model gets ``virtual_token_mask``/``tasknames``; ``None`` decides per
            batch (see ``peft_continual.evaluation.model_inputs``).
        generation_kwargs: extra ``generate`` arguments.
        num_shown: how many distinct outputs outside the label set (or malformed) the metrics quote.
        progress: show tqdm bars.

    Returns:
        ``{taskname: TaskResult}`` for each task that has records, in the order of ``tasks``.

    Raises:
        UnknownTaskError: a record's task has no ``TaskEvaluation`` or no template.
        ConfigError: a task's template has no answer field.
        RecordError: a gold label is outside its task's label set.

    Examples:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from peft_continual.data.templates import TaskTemplate
        >>> from peft_continual.evaluation.labels import LabelNormalization
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=16, intermediate_size=32,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, eos_token_id=2, pad_token_id=2))
        >>> template = TaskTemplate("sentiment", "{sentence} sentiment: {label}", 0, [], "label")
        >>> records = [TaskRecord("sentiment", {"sentence": "Up 5%.", "label": "positive"}, "records[0]")]
        >>> task = TaskEvaluation("sentiment", labels=LabelNormalization(["positive", "negative"]))
        >>> results = evaluate_tasks(model, PromptTokenizer(tokenizer, [template]), records, [task], progress=False)
        >>> sorted(results["sentiment"].metrics)
        ['generation', 'restricted']
    """
    by_name = _index_tasks(tasks)
    unknown = sorted({record.taskname for record in records} - set(by_name))
    if unknown:
        raise UnknownTaskError(f"records of task(s) {unknown} have no TaskEvaluation; evaluated: {allowed(by_name)}")
    groups = {name: [i for i, r in enumerate(records) if r.taskname == name] for name in by_name}
    groups = {name: indices for name, indices in groups.items() if indices}
    references = {
        name: _references(by_name[name], [records[i] for i in idx], prompt_tokenizer) for name, idx in groups.items()
    }
    progress = progress and is_main_process()  # one set of bars when several processes share the records
    texts: list[str | None] = [None] * len(records)
    if generation:
        limits = {name: by_name[name].max_new_tokens for name in groups}
        texts = across_processes(
            lambda share: generate_answers(
                model,
                prompt_tokenizer,
                share,
                max_new_tokens=limits,
                batch_size=batch_size,
                pass_virtual_tokens=pass_virtual_tokens,
                generation_kwargs=generation_kwargs,
                progress=progress,
            ),
            records,
        )
    choices: list[RestrictedChoice | None] = [None] * len(records)
    candidates = {name: by_name[name].candidates() for name in groups}
    candidates = {name: c for name, c in candidates.items() if c is not None}
    if restricted and candidates:
        scored = [i for i, record in enumerate(records) if record.taskname in candidates]
        found = across_processes(
            lambda share: score_candidates(
                model,
                prompt_tokenizer,
                share,
                candidates,
                batch_size=scoring_batch_size,
                pass_virtual_tokens=pass_virtual_tokens,
                progress=progress,
            ),
            [records[i] for i in scored],
        )
        for i, choice in zip(scored, found, strict=True):
            choices[i] = choice
    priors = {}  # taskname -> (C,) log prior divided out of the restricted choices, for the tasks calibrated
    if restricted:
        for name in (name for name in candidates if by_name[name].calibrate):
            if by_name[name].calibration_prior == "inputs" and any(choices[i] for i in groups[name]):
                priors[name] = mean_log_distribution([choices[i] for i in groups[name]])
            elif by_name[name].calibration_prior == "content_free":
                priors[name] = content_free_log_prior(
                    model, prompt_tokenizer, name, candidates[name], batch_size=scoring_batch_size,
                    pass_virtual_tokens=pass_virtual_tokens,
                )  # fmt: skip
    return {
        name: _task_result(
            by_name[name],
            [records[i] for i in idx],
            references[name],
            [texts[i] for i in idx],
            [choices[i] for i in idx],
            generation,
            restricted and name in candidates,
            num_shown,
            priors.get(name),
        )
        for name, idx in groups.items()
    }


def _task_result(
    task: TaskEvaluation,
    records: Sequence[TaskRecord],
    references: Sequence,
    texts: Sequence[str | None],
    choices: Sequence[RestrictedChoice | None],
    generation: bool,
    restricted: bool,
    num_shown: int,
    log_prior: torch.Tensor | None = None,
) -> TaskResult:
    result = TaskResult(task.taskname, task.kind)
    normalised: list[str | None] = [None] * len(records)
    if generation:
        kept = [i for i, text in enumerate(texts) if text is not None]
        metrics, predictions = {"num_examples": 0}, []  # every record skipped: no metric is defined
        if kept:
            score = _classification_generation if task.kind is TaskKind.CLASSIFICATION else _intent_slot_generation
            metrics, predictions = score(task, [texts[i] for i in kept], [references[i] for i in kept], num_shown)
        metrics["num_skipped"] = len(records) - len(kept)
        result.metrics["generation"] = metrics
        for i, prediction in zip(kept, predictions, strict=True):
            normalised[i] = prediction
    if restricted:
        result.metrics["restricted"] = _scored_choice_metrics(task, choices, references)
    calibrated: list[RestrictedChoice | None] = [None] * len(records)
    if log_prior is not None:
        candidates = task.candidates()
        calibrated = [None if c is None else calibrate_choice(c, log_prior, candidates) for c in choices]
        metrics = _scored_choice_metrics(task, calibrated, references)
        metrics["prior"] = dict(zip(task.labels.labels, log_prior.exp().tolist(), strict=True))
        metrics["prior_from"] = task.calibration_prior
        result.metrics["calibrated"] = metrics
    for record, reference, text, prediction, choice, corrected in zip(
        records, references, texts, normalised, choices, calibrated, strict=True
    ):
        gold = reference if isinstance(reference, str) else reference.intent
        answers = {
            "source": record.source,
            "reference": gold,
            "generated": text,
            "prediction": prediction,
            "restricted": None if choice is None or task.labels is None else task.labels.labels[choice.index],
        }
        if log_prior is not None:
            answers["calibrated"] = None if corrected is None else task.labels.labels[corrected.index]
        result.predictions.append(answers)
    return result


def evaluate_task(
    model: Any, prompt_tokenizer: PromptTokenizer, records: Sequence[TaskRecord], task: TaskEvaluation, **kwargs: Any
) -> TaskResult:
    """``evaluate_tasks`` for the records of one task (see there for the keyword arguments).

    Raises:
        UnknownTaskError: a record belongs to another task, or there are no records.
    """
    results = evaluate_tasks(model, prompt_tokenizer, records, [task], **kwargs)
    if task.taskname not in results:
        raise UnknownTaskError(f"no records of task {task.taskname!r} to evaluate")
    return results[task.taskname]
