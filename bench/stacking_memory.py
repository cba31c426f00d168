"""Peak memory of continual p-tuning on SmolLM2-135M: an nf4 base vs an fp32 base (issue 5).

Run from the repository root (SmolLM2 from the embedded-model cache, records from ``../shared/data``)::

    python bench/stacking_memory.py --steps 3 --out bench/results/stacking_memory.json

Each configuration runs in a fresh process: load the base (fp32; fp32 with gradient checkpointing, ``+gc``; or nf4,
bfloat16 compute on CUDA and float32 on CPU, through ``load_quantized_model``, which turns gradient checkpointing on),
wrap it with ``ContinualPromptConfig`` (LSTM encoder, hidden 576, 20 virtual tokens; with
``+lora``, also a LoRA r=8 on q_proj/v_proj), then run ``steps`` training steps (forward, backward, AdamW) at batch 8
on financial_phrasebank records. Reported per configuration:

- ``weights_mib``: bytes of the model's parameters and buffers (the quantized layers count their packed bytes);
- ``start_mib``: memory in use once the model is built (CUDA: allocated; CPU: resident, interpreter included);
- ``peak_mib``: on CUDA, ``torch.cuda.max_memory_allocated`` over the training steps (reset after loading); on CPU,
  the process's peak resident memory (``VmHWM``) over the training steps, reset after loading through
  ``/proc/self/clear_refs``, which includes the Python interpreter and libraries, and whatever loading left
  resident (freed memory that the allocator has not returned counts too).

Self-contained on purpose (no import from ``bench/common.py``), so it runs alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATIONS = ["fp32", "fp32+gc", "nf4", "nf4+lora"]


def measure(configuration: str, steps: int, batch_size: int) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    import torch
    from peft import LoraConfig, get_peft_model

    from peft_continual import (
        ContinualPromptCollator,
        ContinualPromptConfig,
        PromptTokenizer,
        QuantizationArguments,
        TaskTemplate,
        read_jsonl,
    )
    from peft_continual.experiments.task_files import default_data_dir
    from peft_continual.models import EMBEDDED, load_base_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if configuration.startswith("fp32"):
        base, tokenizer = load_base_model(EMBEDDED)
        base.to(device)
        if configuration == "fp32+gc":  # what load_quantized_model turns on for nf4, to compare like with like
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        arguments = QuantizationArguments(compute_dtype="bfloat16" if device == "cuda" else "float32")
        base, tokenizer = load_base_model(EMBEDDED, arguments, device_map={"": device})
    template = TaskTemplate(
        "sentiment", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", 20, [20], "label", truncate_field="sentence"
    )
    stacked = LoraConfig(r=8, target_modules=["q_proj", "v_proj"]) if configuration.endswith("+lora") else None
    config = ContinualPromptConfig(templates=[template], stacked_adapters=stacked).tokenize_tasknames(tokenizer)
    model = get_peft_model(base, config).train()
    data = Path(default_data_dir(ROOT)) / "financial_phrasebank" / "train.jsonl"
    records = [record for _, record in zip(range(batch_size), read_jsonl(data), strict=False)]
    prompt_tokenizer = PromptTokenizer(tokenizer, [template], max_length=128)
    batch = ContinualPromptCollator(pad_token_id=tokenizer.pad_token_id)([prompt_tokenizer(r) for r in records])
    batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    start = _reset_peak(device)
    for _ in range(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {
        "configuration": configuration,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "weights_mib": round(weights / 2**20, 1),
        "start_mib": round(start, 1),
        "peak_mib": round(_peak_mib(device), 1),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "tokens_per_row": int(batch["attention_mask"].sum(1).max()),
    }


def _reset_peak(device: str) -> float:
    """Reset the peak; return the memory in use now (MiB): allocated on CUDA, resident on CPU."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    return _status_mib("VmRSS:")


def _peak_mib(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_mib("VmHWM:")


def _status_mib(key: str) -> float:
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith(key)).split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configurations", nargs="+", default=CONFIGURATIONS, choices=CONFIGURATIONS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for configuration in args.configurations:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            rows.append(pool.submit(measure, configuration, args.steps, args.batch_size).result())
        print(json.dumps(rows[-1]))
    base = next((row for row in rows if row["configuration"] == "fp32"), None)
    print("| configuration | weights MiB | at start MiB | peak MiB | peak vs fp32 |\n|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['peak_mib'] / base['peak_mib']:.2f}x" if base else "-"
        cells = [row["configuration"], row["weights_mib"], row["start_mib"], row["peak_mib"], ratio]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta = {"date": stamp, "python": platform.python_version(), "steps": args.steps, "batch_size": args.batch_size}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
