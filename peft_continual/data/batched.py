"""The data pipeline over a ``datasets.Dataset``: records stream through Arrow instead of Python lists.

``Dataset.map(batched=True, num_proc=...)`` runs the same ``PromptTokenizer`` on slices of the table, caches the
result on disk and can use several processes, so a million records never sit in memory as Python objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from peft_continual.data.records import record_from_dict
from peft_continual.data.tokenize import PromptTokenizer, TokenizedExample

logger = logging.getLogger(__name__)

TOKENIZED_COLUMNS = tuple(TokenizedExample.__dataclass_fields__)


def tokenize_dataset(
    dataset: Any,
    prompt_tokenizer: PromptTokenizer,
    include_answer: bool = True,
    num_proc: int | None = None,
    batch_size: int = 1000,
    name: str = "dataset",
) -> Any:
    """Tokenize a ``datasets.Dataset`` of records (a ``taskname`` column plus the template fields).

    Args:
        dataset: rows shaped like JSONL records.
        prompt_tokenizer: the tokenizer and templates to apply.
        include_answer: tokenize with the answer (training) or without it (generation).
        num_proc: worker processes for ``Dataset.map``; ``None`` runs in this process.
        batch_size: rows per ``map`` call.
        name: how errors name the rows, as ``name[i]``.

    Returns:
        A ``Dataset`` with the columns of ``TokenizedExample``; rows skipped as too long are dropped and counted
        in a warning.
    """
    tokenized = dataset.map(
        _tokenize_rows,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs={"prompt_tokenizer": prompt_tokenizer, "include_answer": include_answer, "name": name},
        desc="tokenizing",
    )
    skipped = len(dataset) - len(tokenized)
    if skipped:
        logger.warning("%s: skipped %d record(s) longer than max_length", name, skipped)
    return tokenized


def _tokenize_rows(
    batch: Mapping[str, list[Any]],
    indices: list[int],
    prompt_tokenizer: PromptTokenizer,
    include_answer: bool,
    name: str,
) -> dict[str, list[Any]]:
    # Arrow fills the columns a row lacks (another task's fields) with None: treat those as absent.
    rows = (
        {column: values[i] for column, values in batch.items() if values[i] is not None} for i in range(len(indices))
    )
    records = [record_from_dict(row, f"{name}[{index}]") for row, index in zip(rows, indices, strict=True)]
    examples = prompt_tokenizer.tokenize_records(records, include_answer).examples
    return {column: [getattr(example, column) for example in examples] for column in TOKENIZED_COLUMNS}
