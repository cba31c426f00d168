"""Greedy generation on SmolLM2-135M: a batch mixing 4 tasks, ours vs the base model vs PEFT's P_TUNING (issue 3).

Run from the repository root (SmolLM2 from ``load_base_model("embedded")``, records from ``../shared/data``)::

    python bench/generate.py --repeats 4 --out bench/results/generate.json

The batch: 8 prompts, 2 per task (financial_phrasebank, SST-2, TREC, assistant NLU test records; 20 virtual tokens
each, at the start, split, in the middle), left-padded; 16 new tokens per row (``min_new_tokens=16``, so every
method produces exactly 8 x 16 tokens). Methods:

- ``base model``: the plain SmolLM2 on the same ids, placeholder ids standing as real tokens (same total length);
- ``ours, 4 tasks``: the 4 tasks frozen into our prompt table (random encoder, ``freeze_tasks()``), one batch;
- ``PEFT P_TUNING``: one adapter (LSTM, hidden 576, 20 tokens) on the prompts without their virtual positions
  (PEFT prepends its 20), with the KV cache and with ``use_cache=False``;
- ``PEFT P_TUNING x4``: 4 such adapters, one batch of 2 rows each, switched with ``set_adapter``.

Generations are timed round-robin across methods (one warm-up round dropped), in CPU time of the process (with 1
thread it leaves out the time other processes hold the core) and in wall time; tokens/s ratios are medians of
per-round ratios to the base model. Checks: our tokens equal a manual greedy loop that recomputes the full sequence
at every step (no cache); PEFT's cached tokens equal its ``use_cache=False`` tokens. Peak RSS per method is measured
in a fresh process (peak over one generation) and compared with the base model's.
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
    generation_batch,
    in_child,
    interleaved_times,
    load_average,
    median_ratio,
    peak_rss_mib,
    report,
    reset_peak_rss,
    select_rows,
    templates,
    without_virtual_tokens,
)
from peft import PromptEncoderConfig, get_peft_model

from peft_continual.models import EMBEDDED, load_base_model
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

TASKNAMES = ["sentiment", "sst2", "trec", "intent_and_slot"]
HEADERS = (
    "method", "tokens/s (CPU time)", "vs base (CPU time)", "tokens/s (wall)", "vs base (wall)", "peak RSS (MiB)",
    "peak RSS over base (MiB)",
)  # fmt: skip
METHODS = ("base model", "ours, 4 tasks", "PEFT P_TUNING", "PEFT P_TUNING use_cache=False", "PEFT P_TUNING x4")
P_TUNING = PromptEncoderConfig(
    task_type="CAUSAL_LM",
    num_virtual_tokens=NUM_VIRTUAL_TOKENS,
    encoder_reparameterization_type="LSTM",
    encoder_hidden_size=576,
)


# ----------------------------------------------------------------------------- one generation per method
def build_generate(method: str, base, tokenizer, args: argparse.Namespace) -> tuple[Callable[[], torch.Tensor], object]:
    """``(generate, model)``: ``generate()`` returns ``(B, args.new_tokens)`` new tokens of ``method`` for the batch."""
    batch = generation_batch(tokenizer, args.data_dir, TASKNAMES, args.rows_per_task)
    settings = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    torch.manual_seed(args.seed)
    if method == "base model":
        model, inputs = base, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    elif method == "ours, 4 tasks":
        config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=templates(TASKNAMES))
        model, inputs = get_peft_model(base, config.tokenize_tasknames(tokenizer)), batch
        model.freeze_tasks()
    elif method == "PEFT P_TUNING x4":
        model = get_peft_model(base, P_TUNING, adapter_name=TASKNAMES[0])
        for name in TASKNAMES[1:]:
            model.add_adapter(name, P_TUNING)
        return _one_adapter_per_task(model.eval(), batch, settings), model
    else:
        model, inputs = get_peft_model(base, P_TUNING), without_virtual_tokens(batch)
        settings["use_cache"] = not method.endswith("use_cache=False")
    model.eval()
    return (lambda: model.generate(**inputs, **settings)[:, -args.new_tokens :]), model


def _one_adapter_per_task(model, batch: dict, settings: dict) -> Callable[[], torch.Tensor]:
    """Serve each task's rows as its own batch (left padding trimmed to the pair) after ``set_adapter(task)``."""
    rows = {name: [i for i, task in enumerate(batch["tasknames"]) if task == name] for name in TASKNAMES}
    inputs = {}
    for name, index in rows.items():
        part = without_virtual_tokens(select_rows(batch, index))
        used = part["attention_mask"].any(0)
        inputs[name] = {key: value[:, used] for key, value in part.items()}

    def generate() -> torch.Tensor:
        out = torch.empty(len(batch["tasknames"]), settings["max_new_tokens"], dtype=torch.long)
        for name, index in rows.items():
            model.set_adapter(name)
            out[index] = model.generate(**inputs[name], **settings)[:, -settings["max_new_tokens"] :]
        return out

    return generate


@torch.no_grad()
def greedy_reference(model, batch: dict, new_tokens: int, eos_ids: list[int]) -> torch.Tensor:
    """Greedy decoding that recomputes the whole sequence at every step (no KV cache), EOS banned as in generate."""
    ids, attention, virtual = batch["input_ids"], batch["attention_mask"], batch["virtual_token_mask"]
    for _ in range(new_tokens):
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=positions,
            virtual_token_mask=virtual,
            tasknames=batch["tasknames"],
            use_cache=False,
        ).logits[:, -1]
        logits[:, eos_ids] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        virtual = torch.cat([virtual, torch.zeros_like(virtual[:, :1])], dim=1)
    return ids[:, -new_tokens:]


def load_base(args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return load_base_model(EMBEDDED)


# ----------------------------------------------------------------------------- memory, in a child process
def measure_memory(method: str, args: argparse.Namespace) -> dict[str, float]:
    base, tokenizer = load_base(args)
    generate, _ = build_generate(method, base, tokenizer, args)
    reset_peak_rss()
    before = current_rss_mib()
    generate()
    return {"rss_before_mib": before, "peak_mib": peak_rss_mib()}


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-task", type=int, default=2, help="rows per task; 4 tasks")
    parser.add_argument("--new-tokens", type=int, default=16)
    add_run_arguments(parser, repeats=4)
    args = parser.parse_args()
    load_start = load_average()
    print(f"load average at start: {load_start}")

    # 1. peak memory: one fresh process per method
    memory = {method: in_child(measure_memory, method, args) for method in METHODS}
    for method, mem in memory.items():
        print(f"memory {method}: {mem}")

    # 2. generations: round-robin over the methods, on one base model
    base, tokenizer = load_base(args)
    built = {method: build_generate(method, base, tokenizer, args) for method in METHODS}
    runs = {method: run for method, (run, _) in built.items()}
    timing = interleaved_times(runs, args.repeats, args.warmup)
    outputs = timing["outputs"]

    # 3. correctness: ours vs full recomputation; PEFT cached vs PEFT uncached
    batch = generation_batch(tokenizer, args.data_dir, TASKNAMES, args.rows_per_task)
    eos = base.generation_config.eos_token_id
    reference = greedy_reference(
        built["ours, 4 tasks"][1], batch, args.new_tokens, eos if isinstance(eos, list) else [eos]
    )
    checks = {
        "ours == uncached reference": _rows_equal(outputs["ours, 4 tasks"], reference),
        "PEFT cached == PEFT use_cache=False": _rows_equal(
            outputs["PEFT P_TUNING"], outputs["PEFT P_TUNING use_cache=False"]
        ),
    }

    # 4. report
    tokens = len(batch["tasknames"]) * args.new_tokens
    base_peak = memory["base model"]["peak_mib"]
    rows, results = [], []
    for method in METHODS:
        mem, cpu, wall = memory[method], timing["cpu"], timing["wall"]
        result = {"method": method, "cpu_s": cpu[method], "wall_s": wall[method], **mem}
        result["cpu_tokens_per_s"] = tokens / statistics.median(cpu[method])
        result["wall_tokens_per_s"] = tokens / statistics.median(wall[method])
        result["cpu_vs_base"] = 1 / median_ratio(cpu[method], cpu["base model"])  # tokens/s ratio: inverse time ratio
        result["wall_vs_base"] = 1 / median_ratio(wall[method], wall["base model"])
        result["peak_over_base_mib"] = over = mem["peak_mib"] - base_peak
        results.append(result)
        rows.append(
            [method, f"{result['cpu_tokens_per_s']:.1f}", f"{result['cpu_vs_base']:.2f}x",
             f"{result['wall_tokens_per_s']:.1f}", f"{result['wall_vs_base']:.2f}x", f"{mem['peak_mib']:.0f}",
             f"{over:+.0f} ({over / base_peak:+.1%})"]
        )  # fmt: skip
    setting = f"fp32, {len(batch['tasknames'])} rows x {args.new_tokens} new tokens, {args.repeats} rounds + {args.warmup} warm-up"
    checks_json = {name: check[0] for name, check in checks.items()}
    outputs_json = {method: out.tolist() for method, out in outputs.items()}
    report(
        "generate", args, load_start, setting, HEADERS, rows, results=results, checks=checks_json, outputs=outputs_json
    )
    for name, (equal, rows_equal) in checks.items():
        print(f"{name}: {equal} ({rows_equal}/{len(batch['tasknames'])} rows equal)")


def _rows_equal(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, int]:
    equal_rows = int((a == b).all(-1).sum())
    return equal_rows == a.shape[0], equal_rows


if __name__ == "__main__":
    main()
