"""Evaluate a tiny random model on real test records, alone or as one of several processes, and save the answers.

    python tests/distributed/evaluate_tiny.py OUTPUT_JSON DATA_DIR

``tests/distributed/test_evaluation.py`` runs it in 1 and in 2 processes: ``evaluate_tasks`` splits the records
between the processes and gathers the answers, so both must save the same predictions and metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from peft_continual.data.records import read_jsonl  # noqa: E402
from peft_continual.data.templates import TaskTemplate  # noqa: E402
from peft_continual.data.tokenize import PromptTokenizer  # noqa: E402
from peft_continual.evaluation import LabelNormalization, TaskEvaluation, evaluate_tasks, report  # noqa: E402
from peft_continual.processes import distributed, end_processes, is_main_process  # noqa: E402
from tests.conftest import SMOLLM2_TOKENIZER_DIR, build_tiny_model  # noqa: E402

TEMPLATE = TaskTemplate("sentiment", "{sentence}\nSentiment: {label}", 0, [], "label")


def main(output: Path, data_dir: Path) -> None:
    from accelerate import PartialState
    from transformers import AutoTokenizer

    PartialState(cpu=True)  # joins the launcher's process group (gloo); alone, a plain process
    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)
    records = read_jsonl(data_dir / "financial_phrasebank" / "test.jsonl")[:9]  # 9: the processes get 5 and 4
    task = TaskEvaluation("sentiment", labels=LabelNormalization(["positive", "negative", "neutral"]), max_new_tokens=3)
    model = build_tiny_model("llama").eval()  # the same seeded weights in every process
    generated = count_generated_records()
    # batch 1 and 1: a record's answer does not depend on which others share its batch (padding)
    (result,) = evaluate_tasks(model, PromptTokenizer(tokenizer, [TEMPLATE]), records, [task], batch_size=1,
                               scoring_batch_size=1, progress=False).values()  # fmt: skip
    rank = torch.distributed.get_rank() if distributed() else 0
    output.with_name(f"{output.stem}.generated_by_{rank}").write_text(str(sum(generated)))
    if is_main_process():
        saved = {"distributed": distributed(), "metrics": result.metrics, "predictions": result.predictions}
        output.write_text(json.dumps(saved, indent=1))
    end_processes()


def count_generated_records() -> list[int]:
    """Count the records this process generates answers for (one entry per ``generate_answers`` call)."""
    counts = []
    real = report.generate_answers

    def counting(model, prompt_tokenizer, records, **kwargs):
        counts.append(len(records))
        return real(model, prompt_tokenizer, records, **kwargs)

    report.generate_answers = counting
    return counts


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
