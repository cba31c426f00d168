"""Throughput of the data pipeline: records -> tokens over a ``datasets.Dataset`` of 100k records.

Run from the repository root (the SmolLM2 tokenizer comes from the test assets, the records from
``../shared/data/assistant_nlu``, repeated up to the requested count)::

    python bench/data_pipeline.py --records 100000 --num-proc 1 2

It prints one line per ``num_proc``: records, seconds, records per second. The cache of ``Dataset.map`` is
disabled so every run does the work.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import datasets
from transformers import AutoTokenizer

from peft_continual.data.batched import tokenize_dataset
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.experiments.task_files import default_data_dir

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = TaskTemplate(
    "intent_and_slot", "<|VIRTUAL_PROMPT_0|> {utterance} \n<|VIRTUAL_PROMPT_1|>{label}", 12, [8, 4], "label"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-dir", type=Path, default=Path(default_data_dir(ROOT)))
    args = parser.parse_args()

    datasets.disable_caching()
    source = datasets.load_dataset(
        "json", data_files=str(args.data_dir / "assistant_nlu" / "train.jsonl"), split="train"
    ).select_columns(["taskname", "utterance", "label"])
    repeats = -(-args.records // len(source))
    records = datasets.concatenate_datasets([source] * repeats).select(range(args.records))
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "smollm2_tokenizer")
    prompt_tokenizer = PromptTokenizer(tokenizer, [TEMPLATE], max_length=256)

    for num_proc in args.num_proc:
        start = time.perf_counter()
        tokenized = tokenize_dataset(records, prompt_tokenizer, num_proc=None if num_proc == 1 else num_proc)
        seconds = time.perf_counter() - start
        print(f"num_proc={num_proc}: {len(tokenized)} records in {seconds:.1f} s ({len(tokenized) / seconds:,.0f}/s)")


if __name__ == "__main__":
    main()
