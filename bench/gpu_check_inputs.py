"""Inputs of ``bench/gpu_check.sh`` that a lent machine can build without the network or ``../shared/data``: a small
random Llama saved with SmolLM2's tokenizer (kept in ``tests/assets``), and a labelled data set of two tasks.

    python bench/gpu_check_inputs.py FOLDER

writes ``FOLDER/model/``, ``FOLDER/data/<task>/{train,validation,test}.jsonl`` and ``FOLDER/tasks.yaml`` (a task file
of two rounds for the continual recipe; its first task serves the single-task recipes). The recipes run on them to
check that every path works on the device; the accuracies mean nothing.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model  # noqa: E402

LABELS = {"positive": ["rose", "beat forecasts", "grew"], "negative": ["fell", "missed forecasts", "shrank"]}
TASKS = """tasks:
  - {taskname: sentiment, round: 1, dataset: sentiment, total_virtual_tokens: 8, virtual_token_splits: [4, 4],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\n<|VIRTUAL_PROMPT_1|>Sentiment: {label}", answer_field: label,
     train_records: 64, eval_records: 32, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [positive, negative]}, max_new_tokens: 3}}
  - {taskname: topic, round: 2, dataset: topic, total_virtual_tokens: 6, virtual_token_splits: [6],
     prompt_template: "<|VIRTUAL_PROMPT_0|>{sentence}\\nTopic: {label}", answer_field: label,
     train_records: 64, eval_records: 32, fewshot: {k: 1},
     evaluation: {kind: classification, labels: {labels: [sales, costs]}, max_new_tokens: 3}}
"""


def records(task: str, count: int, seed: int) -> list[dict]:
    generator = random.Random(seed)
    rows = []
    for i in range(count):
        label = generator.choice(sorted(LABELS))
        subject = generator.choice(["Sales", "Costs"])
        sentence = (
            f"{subject} {generator.choice(LABELS[label])} by {generator.randint(1, 30)} % in quarter {i % 4 + 1} ."
        )
        answer = label if task == "sentiment" else subject.lower()
        rows.append({"taskname": task, "sentence": sentence, "label": answer})
    return rows


def main(folder: Path) -> None:
    from transformers import AutoTokenizer

    build_tiny_model("llama").save_pretrained(folder / "model")
    AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR).save_pretrained(folder / "model")
    for task in ("sentiment", "topic"):
        for seed, split in enumerate(("train", "validation", "test")):
            path = folder / "data" / task / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(row) + "\n" for row in records(task, 128, seed)))
    (folder / "tasks.yaml").write_text(TASKS)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
