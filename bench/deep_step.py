"""One training step of the deep demo's round 1 by how far down the prompts are trained, against PEFT's prefix tuning.

Run from the repository root (SmolLM2 from ``load_base_model("embedded")``, records from ``../shared/data``)::

    python bench/deep_step.py --repeats 8 --out bench/results/deep_step.json

A step is forward + backward + AdamW step on a random batch of the deep demo's round-1 training records
(``sentiment`` + ``intent_and_slot``, 20 virtual tokens each, batch 4 as in
``recipes/configs/continual_p_tuning/smollm2_135m_deep.yaml``), the loss read from the labelled positions only, as
``ContinualTrainer`` runs it. Each round draws a new batch and runs every method on it. Methods:

- ``ours, depth 1``: shallow p-tuning (the default demo);
- ``ours, depth 30``: deep prompts at all 30 layers (the deep demo), every slice trained;
- ``ours, depth 30, trained from layer s``: the same with ``first_trained_layer=s``: the slices below layer ``s``
  are held at the init text, and the backward pass stops at layer ``s``;
- ``PEFT PREFIX_TUNING``: PEFT's deep prompts (20 key/value prefixes at every layer, its default projection-free
  setting) on the same rows without their virtual positions, so that it attends to as many positions as ours.

Ratios are medians of per-round ratios to ``PEFT PREFIX_TUNING``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import ROOT, add_run_arguments, interleaved_times, load_average, median_ratio, report, round_one_batches
from peft import PrefixTuningConfig, get_peft_model

from peft_continual import ContinualPromptConfig
from peft_continual.answer_loss import labelled_positions, loss_at_positions
from peft_continual.models import EMBEDDED, load_base_model

TASKS = ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks_sentiment_balanced.yaml"
DEPTH = 30
REFERENCE = "PEFT PREFIX_TUNING"
HEADERS = ("method", "wall s/step", f"vs {REFERENCE}", "CPU s/step")


def method_names(first_trained_layers: list[int]) -> list[str]:
    trained_from = [f"ours, depth {DEPTH}, trained from layer {s}" for s in first_trained_layers]
    return ["ours, depth 1", f"ours, depth {DEPTH}", *trained_from, REFERENCE]


def build_model(method: str, specs: list, tokenizer) -> torch.nn.Module:
    """A fresh adapter of ``method`` on a fresh base model (each method owns its base: deep prompts hook its layers)."""
    base, _ = load_base_model(EMBEDDED)
    if method == REFERENCE:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20)
        return get_peft_model(base, config)
    depth = 1 if method == "ours, depth 1" else DEPTH
    first = int(method.rsplit(" ", 1)[1]) if "trained from" in method else 0
    config = ContinualPromptConfig(
        task_type="CAUSAL_LM", templates=[s.template for s in specs], prompt_depth=depth, first_trained_layer=first
    )
    return get_peft_model(base, config.tokenize_tasknames(tokenizer))


def build_step(method: str, model: torch.nn.Module, batches: list[dict]) -> Callable[[], float]:
    """A closure running one step of ``method`` on the next batch of ``batches`` (the same order for every method)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    position = iter(range(10**9))

    def step() -> float:
        batch = dict(batches[next(position) % len(batches)])
        if method == REFERENCE:  # PEFT's prefixes hold the virtual tokens: the rows without them
            keep = ~batch.pop("virtual_token_mask")
            batch.pop("tasknames")
            rows = [{k: v[i][keep[i]] for k, v in batch.items()} for i in range(keep.shape[0])]
            batch = {k: torch.nn.utils.rnn.pad_sequence([r[k] for r in rows], batch_first=True) for k in batch}
            batch["labels"][batch["attention_mask"] == 0] = -100
        labels = batch.pop("labels")
        optimizer.zero_grad(set_to_none=True)
        positions = labelled_positions(labels)
        loss = loss_at_positions(model(**batch, logits_to_keep=positions).logits, labels, positions)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--first-trained-layers", type=int, nargs="+", default=[10, 15, 20])
    add_run_arguments(parser, repeats=8)
    parser.set_defaults(threads=2)  # the demo's setting: both cores
    args = parser.parse_args()
    load_start = load_average()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    _, tokenizer = load_base_model(EMBEDDED)
    rounds = args.warmup + args.repeats
    specs, batches = round_one_batches(tokenizer, TASKS, args.data_dir, args.batch_size, rounds, args.seed)
    methods = method_names(args.first_trained_layers)
    steps = {method: build_step(method, build_model(method, specs, tokenizer), batches) for method in methods}
    timing = interleaved_times(steps, args.repeats, args.warmup)

    rows, results = [], []
    wall, cpu = timing["wall"], timing["cpu"]
    for method in methods:
        ratio = median_ratio(wall[method], wall[REFERENCE])
        result = {"method": method, "wall_s": wall[method], "cpu_s": cpu[method], "wall_vs_reference": ratio}
        results.append(result)
        rows.append([method, f"{statistics.median(wall[method]):.3f}", f"{ratio:.3f}x",
                     f"{statistics.median(cpu[method]):.3f}"])  # fmt: skip
    setting = f"deep demo round 1 batches of {args.batch_size}, fp32, {args.repeats} rounds + {args.warmup} warm-up"
    report("deep_step", args, load_start, setting, HEADERS, rows, results=results)


if __name__ == "__main__":
    main()
