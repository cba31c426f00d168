"""One training step on SmolLM2-135M: our continual p-tuning vs PEFT's P_TUNING vs the floor (issue 3, item 9).

Run from the repository root (SmolLM2 from ``load_base_model("embedded")``, records from ``../shared/data``)::

    python bench/train_step.py --lengths 64 128 --repeats 5 --out bench/results/train_step.json

A step is forward + backward + AdamW step, batch 8, on real records of exactly ``length`` tokens (consecutive test
sentences joined, truncated on the text field; 20 of the tokens are virtual). Methods:

- ``floor``: the frozen base, forward + backward to ``inputs_embeds`` only (no trainable parameter, no optimizer);
- ``ours, 1 task``: ``ContinualPromptConfig`` (default LSTM encoder: hidden 256, 20 virtual tokens), financial_phrasebank;
- ``ours, 2 tasks``: the same with rows alternating between financial_phrasebank and SST-2 (split 10 + 10);
- ``ours, 1 task, hidden 576``: ``ours, 1 task`` with PEFT's encoder size (``encoder_hidden_size=576``);
- ``PEFT P_TUNING``: ``PromptEncoderConfig`` (LSTM, hidden 576, 20 tokens) on the rows without their virtual
  positions (``length - 20`` ids), since PEFT prepends its 20 tokens: every method runs on ``length`` positions.

Steps are timed round-robin across methods (one warm-up round dropped), in CPU time of the process (with 1 thread it
leaves out the time other processes hold the core: the steadier measure on a shared machine) and in wall time; ratios
are medians of per-round ratios to the floor. Peak RSS is measured per method in a fresh process (peak over 2 steps; weights are paged in by the
first step alike for all methods) and compared with the floor's.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from common import (
    NUM_VIRTUAL_TOKENS,
    add_run_arguments,
    current_rss_mib,
    in_child,
    interleaved_times,
    load_average,
    median_ratio,
    peak_rss_mib,
    report,
    reset_peak_rss,
    templates,
    training_batch,
    without_virtual_tokens,
)
from peft import PromptEncoderConfig, get_peft_model

from peft_continual.models import EMBEDDED, load_base_model
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

HEADERS = (
    "length", "method", "CPU s/step", "CPU time vs floor", "wall s/step", "wall time vs floor", "peak RSS (MiB)",
    "peak RSS over floor (MiB)",
)  # fmt: skip
METHODS = ("floor", "ours, 1 task", "ours, 2 tasks", "ours, 1 task, hidden 576", "PEFT P_TUNING")
TASKS_OF = {
    "floor": ["sentiment"],
    "ours, 1 task": ["sentiment"],
    "ours, 2 tasks": ["sentiment", "sst2"],
    "ours, 1 task, hidden 576": ["sentiment"],
    "PEFT P_TUNING": ["sentiment"],
}
ENCODER_HIDDEN_SIZE = {"ours, 1 task, hidden 576": 576}  # the others: the default (min(576, 256) on SmolLM2)


# ----------------------------------------------------------------------------- one step per method
def build_step(method: str, base: torch.nn.Module, tokenizer, args: argparse.Namespace, length: int) -> Callable:
    """A closure running one training step of ``method`` on a fixed batch (fresh adapter on the shared ``base``)."""
    batch = training_batch(tokenizer, args.data_dir, TASKS_OF[method], args.batch_size, length)
    torch.manual_seed(args.seed)
    if method == "floor":
        base.requires_grad_(False)
        embeddings = base.get_input_embeddings()

        def floor_step() -> None:
            inputs_embeds = embeddings(batch["input_ids"]).detach().requires_grad_()
            base(
                inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss.backward()

        return floor_step
    if method == "PEFT P_TUNING":
        config = PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=NUM_VIRTUAL_TOKENS,
            encoder_reparameterization_type="LSTM",
            encoder_hidden_size=576,
        )
        model, batch = get_peft_model(base, config), without_virtual_tokens(batch)
    else:
        config = ContinualPromptConfig(
            task_type="CAUSAL_LM",
            templates=templates(TASKS_OF[method]),
            encoder_hidden_size=ENCODER_HIDDEN_SIZE.get(method),
        )
        model = get_peft_model(base, config.tokenize_tasknames(tokenizer))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def adapter_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return adapter_step


def load_base(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return load_base_model(EMBEDDED)


# ----------------------------------------------------------------------------- memory, in a child process
def measure_memory(method: str, length: int, args: argparse.Namespace) -> dict[str, float]:
    """Peak RSS over ``args.memory_steps`` steps of one method in this (fresh) process, and the RSS before them."""
    base, tokenizer = load_base(args)
    step = build_step(method, base, tokenizer, args, length)
    reset_peak_rss()
    before = current_rss_mib()
    for _ in range(args.memory_steps):
        step()
    return {"rss_before_mib": before, "peak_mib": peak_rss_mib()}


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128], help="sequence lengths (tokens)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory-steps", type=int, default=2, help="steps per method in the memory child")
    add_run_arguments(parser, repeats=5)
    args = parser.parse_args()
    load_start = load_average()
    print(f"load average at start: {load_start}")

    # 1. peak memory: one fresh process per method and length
    memory = {}
    for length in args.lengths:
        for method in METHODS:
            memory[length, method] = in_child(measure_memory, method, length, args)
            print(f"memory L={length} {method}: {memory[length, method]}")

    # 2. step times: round-robin over the methods, on one base model
    base, tokenizer = load_base(args)
    timing = {}
    for length in args.lengths:
        print(f"timing L={length}")
        steps = {method: build_step(method, base, tokenizer, args, length) for method in METHODS}
        timing[length] = interleaved_times(steps, args.repeats, args.warmup)
        del steps

    # 3. report
    rows, results = [], []
    for length, method in memory:
        mem, floor_peak = memory[length, method], memory[length, "floor"]["peak_mib"]
        cpu, wall = timing[length]["cpu"], timing[length]["wall"]
        result = {"length": length, "method": method, "cpu_s": cpu[method], "wall_s": wall[method], **mem}
        result["cpu_median_s"] = statistics.median(cpu[method])
        result["wall_median_s"] = statistics.median(wall[method])
        result["cpu_vs_floor"] = median_ratio(cpu[method], cpu["floor"])
        result["wall_vs_floor"] = median_ratio(wall[method], wall["floor"])
        result["peak_over_floor_mib"] = over = mem["peak_mib"] - floor_peak
        results.append(result)
        rows.append(
            [length, method, f"{result['cpu_median_s']:.2f}", f"{result['cpu_vs_floor']:.3f}x",
             f"{result['wall_median_s']:.2f}", f"{result['wall_vs_floor']:.3f}x", f"{mem['peak_mib']:.0f}",
             f"{over:+.0f} ({over / floor_peak:+.1%})"]
        )  # fmt: skip
    setting = f"fp32, batch {args.batch_size}, {args.repeats} rounds + {args.warmup} warm-up"
    report("train_step", args, load_start, setting, HEADERS, rows, results=results)


if __name__ == "__main__":
    main()
