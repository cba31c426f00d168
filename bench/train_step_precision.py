"""One training step of the continual demo's round 1, by precision and by which logits the loss reads.

Run from the repository root (SmolLM2 from ``load_base_model("embedded")``, records from ``../shared/data``)::

    python bench/train_step_precision.py --repeats 8 --out bench/results/train_step_precision.json

A step is forward + backward + AdamW step of the demo's round-1 model (``sentiment`` + ``intent_and_slot``, LSTM
encoder, 20 virtual tokens each) on a random batch of 8 of their training records (answer-only loss), as
``ContinualTrainer`` runs it. Each round draws a new batch and runs every variant on it:

- ``fp32, all logits``: the loss from the logits of every position (what ``Trainer`` computes by itself);
- ``fp32, labelled logits``: the loss from the positions that predict a label only (``peft_continual.answer_loss``);
- ``bf16 autocast, labelled logits``: the same under CPU bf16 autocast (only where oneDNN runs bf16).

Ratios are medians of per-round ratios to ``fp32, all logits``. ``precision="auto"`` takes bf16 on a CPU only where
this benchmark shows it faster (AMX); run it on a new kind of CPU to check the rule.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import ROOT, add_run_arguments, interleaved_times, load_average, median_ratio, report, round_one_batches
from peft import get_peft_model

from peft_continual import ContinualPromptConfig
from peft_continual.answer_loss import labelled_positions, loss_at_positions
from peft_continual.machine import cpu_bf16_support
from peft_continual.models import EMBEDDED, load_base_model

TASKS = ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"
HEADERS = ("variant", "wall s/step", "vs fp32 all logits", "CPU s/step")
VARIANTS = ("fp32, all logits", "fp32, labelled logits", "bf16 autocast, labelled logits")


def build_step(variant: str, model: torch.nn.Module, batches: list[dict]) -> Callable[[], float]:
    """A closure running one step of ``variant`` on the next batch of ``batches`` (the same order for every variant)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    bf16 = variant.startswith("bf16")
    labelled = "labelled" in variant
    position = iter(range(10**9))

    def step() -> float:
        batch = dict(batches[next(position) % len(batches)])
        labels = batch.pop("labels")
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if labelled:
                positions = labelled_positions(labels)
                loss = loss_at_positions(model(**batch, logits_to_keep=positions).logits, labels, positions)
            else:
                loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    add_run_arguments(parser, repeats=8)
    parser.set_defaults(threads=2)  # the demo's setting: both cores
    args = parser.parse_args()
    load_start = load_average()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    base, tokenizer = load_base_model(EMBEDDED)
    rounds = args.warmup + args.repeats
    specs, batches = round_one_batches(tokenizer, TASKS, args.data_dir, args.batch_size, rounds, args.seed)
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=[s.template for s in specs])
    model = get_peft_model(base, config.tokenize_tasknames(tokenizer))
    model.train()

    variants = [v for v in VARIANTS if not v.startswith("bf16") or cpu_bf16_support().onednn]
    steps = {variant: build_step(variant, model, batches) for variant in variants}
    timing = interleaved_times(steps, args.repeats, args.warmup)

    rows, results = [], []
    wall, cpu = timing["wall"], timing["cpu"]
    for variant in variants:
        ratio = median_ratio(wall[variant], wall["fp32, all logits"])
        result = {"variant": variant, "wall_s": wall[variant], "cpu_s": cpu[variant], "wall_vs_fp32_all": ratio}
        results.append(result)
        rows.append([variant, f"{statistics.median(wall[variant]):.2f}", f"{ratio:.3f}x",
                     f"{statistics.median(cpu[variant]):.2f}"])  # fmt: skip
    skipped = [v for v in VARIANTS if v not in variants]
    setting = f"demo round 1 batches of {args.batch_size}, {args.repeats} rounds + {args.warmup} warm-up"
    report("train_step_precision", args, load_start, setting, HEADERS, rows, results=results, not_run=skipped)


if __name__ == "__main__":
    main()
