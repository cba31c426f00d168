"""Padding of the continual demo's training batches: random order against ``group_by_length_per_task``.

    python bench/padding.py [--tasks recipes/configs/continual_p_tuning/tasks.yaml] [--batch_size 8]

For each round of the task file, the rounds' training records (the subsets the demo trains on) are tokenized with
the templates, ordered by a seeded random permutation and by ``TaskMixedLengthSampler``, cut into batches, and the
share of padded tokens is printed with the per-batch spread of the task mix. Tokenization only: seconds, any machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft_continual import PromptTokenizer  # noqa: E402
from peft_continual.data.length_sampler import TaskMixedLengthSampler  # noqa: E402
from peft_continual.experiments.task_files import default_data_dir, load_split, load_task_specs, rounds_of  # noqa: E402
from peft_continual.models import load_base_model  # noqa: E402


def padded_share(lengths: list[int], order: list[int], batch_size: int) -> float:
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return 1 - sum(lengths) / sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=str(ROOT / "recipes/configs/continual_p_tuning/tasks.yaml"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    specs = load_task_specs(args.tasks)
    _, tokenizer = load_base_model("embedded")
    prompts = PromptTokenizer(tokenizer, [s.template for s in specs], max_length=256)
    print("| round | tasks | rows | padded tokens, random order % | padded tokens, group_by_length_per_task % |")
    print("|---|---|---|---|---|")
    for number, round_specs in enumerate(rounds_of(specs), start=1):
        records = [
            r for s in round_specs for r in load_split(s, default_data_dir(ROOT), "train", s.train_records, args.seed)
        ]
        examples = prompts.tokenize_records(records).examples
        lengths, tasks = [len(e.input_ids) for e in examples], [e.taskname for e in examples]
        shuffled = list(range(len(lengths)))
        random.Random(args.seed).shuffle(shuffled)
        grouped = list(TaskMixedLengthSampler(lengths, tasks, args.batch_size, seed=args.seed))
        names = ", ".join(s.taskname for s in round_specs)
        print(
            f"| {number} | {names} | {len(lengths)} | {100 * padded_share(lengths, shuffled, args.batch_size):.1f} "
            f"| {100 * padded_share(lengths, grouped, args.batch_size):.1f} |"
        )
    print(
        f"\nbatch size {args.batch_size}, seed {args.seed}; mean rows: {statistics.mean(lengths):.1f} tokens (last round)"
    )


if __name__ == "__main__":
    main()
