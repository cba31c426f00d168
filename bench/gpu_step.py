"""Train step and generation on a GPU: our continual p-tuning vs PEFT's P_TUNING and prompt tuning, same model, same
run (``bench/gpu_check.sh`` runs it when a CUDA machine is lent).

    python bench/gpu_step.py --dtype bfloat16 --out bench/results/gpu_check/gpu_step.json

The model is SmolLM2-135M's architecture (Llama: hidden 576, 30 layers, vocabulary 49152) with random weights, so the
lent machine needs no download and no GGUF reader: speed does not depend on the weights' values. A step is
forward + backward + AdamW step at batch 8 of ``--length`` tokens (20 of them virtual); generation is 16 new tokens
for 8 rows of 2 tasks (exactly 16: EOS does not stop it). Times are CUDA-synchronised medians over ``--repeats`` rounds (methods interleaved, one
warm-up round), reported as ratios to PEFT's P_TUNING; peak memory is ``torch.cuda.max_memory_allocated`` per
method. Without a GPU it runs the same code on the CPU at a tenth of the size (a check that it works, not a figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from peft_continual import ContinualPromptConfig, TaskTemplate
from peft_continual.machine import machine_facts

VIRTUAL = 20
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 2048}  # fmt: skip
SMALL = {**SMOLLM2, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # fmt: skip
TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", VIRTUAL, [VIRTUAL], "label"),
    TaskTemplate("intent", "<|VIRTUAL_PROMPT_0|>{utterance}\n{label}", VIRTUAL, [VIRTUAL], "label"),
]


def base_model(sizes: dict, dtype: torch.dtype, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(**sizes, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype)


def methods(sizes: dict, dtype: torch.dtype, device: str) -> dict[str, tuple[torch.nn.Module, bool]]:
    """name -> (model, whether its rows carry our virtual positions); PEFT's methods prepend their own tokens."""
    ours = ContinualPromptConfig(task_type="CAUSAL_LM", templates=TEMPLATES)
    ours.taskname_token_ids = {template.taskname: [100 + i] for i, template in enumerate(TEMPLATES)}
    peft_p_tuning = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL,
                                        encoder_hidden_size=sizes["hidden_size"])  # fmt: skip
    prompt_tuning = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL)
    return {
        "ours (continual p-tuning, LSTM)": (get_peft_model(base_model(sizes, dtype, device), ours), True),
        "PEFT P_TUNING (LSTM)": (get_peft_model(base_model(sizes, dtype, device), peft_p_tuning), False),
        "PEFT prompt tuning": (get_peft_model(base_model(sizes, dtype, device), prompt_tuning), False),
    }


def batch(ours: bool, length: int, device: str) -> dict[str, object]:
    """8 rows of ``length`` positions in all: ours with 20 virtual positions inside, PEFT's 20 shorter (it prepends)."""
    generator = torch.Generator().manual_seed(0)
    tokens = length if ours else length - VIRTUAL
    input_ids = torch.randint(200, 40000, (8, tokens), generator=generator)
    labels = input_ids.clone()
    labels[:, : tokens - 4] = -100  # a 4-token answer
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    if ours:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        mask[:, :VIRTUAL] = True
        inputs |= {"virtual_token_mask": mask, "tasknames": ["sentiment", "intent"] * 4}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], None], device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def measure(sizes: dict, dtype: torch.dtype, device: str, length: int, repeats: int) -> list[dict]:
    rows = []
    models = methods(sizes, dtype, device)
    steps, generations = {}, {}
    for name, (model, ours) in models.items():
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        inputs = batch(ours, length, device)

        def train_step(model=model, optimizer=optimizer, inputs=inputs):
            model.train()
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        def generate(model=model, inputs=inputs):
            model.eval()
            prompt = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad():
                model.generate(**prompt, max_new_tokens=16, min_new_tokens=16, do_sample=False, pad_token_id=2)

        steps[name], generations[name] = train_step, generate
    times = {name: {"step": [], "generate": []} for name in models}
    for round_number in range(repeats + 1):  # round 0 warms up
        for name in models:
            step_seconds, generate_seconds = timed(steps[name], device), timed(generations[name], device)
            if round_number:
                times[name]["step"].append(step_seconds)
                times[name]["generate"].append(generate_seconds)
    reference = "PEFT P_TUNING (LSTM)"
    for name in models:
        peak = None
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            steps[name]()
            peak = round(torch.cuda.max_memory_allocated() / 2**20)
        rows.append({
            "method": name,
            "step_ms": round(1000 * statistics.median(times[name]["step"]), 2),
            "generate_ms": round(1000 * statistics.median(times[name]["generate"]), 2),
            "step_vs_peft_p_tuning": round(statistics.median(times[name]["step"]) /
                                           statistics.median(times[reference]["step"]), 3),
            "generate_vs_peft_p_tuning": round(statistics.median(times[name]["generate"]) /
                                               statistics.median(times[reference]["generate"]), 3),
            "peak_memory_mib": peak,
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = SMOLLM2 if device == "cuda" else SMALL
    dtype = getattr(torch, args.dtype)
    rows = measure(sizes, dtype, device, args.length, args.repeats if device == "cuda" else 1)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (a check, not a figure)",
              "dtype": args.dtype, "length": args.length, "model": "SmolLM2-135M architecture, random weights"
              if device == "cuda" else "a small Llama", "rows": rows, "machine": machine_facts(),
              "versions": {"torch": torch.__version__}}  # fmt: skip
    lines = ["| method | step ms | generate ms | step / PEFT P_TUNING | generate / PEFT P_TUNING | peak MiB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['method']} | {r['step_ms']} | {r['generate_ms']} | {r['step_vs_peft_p_tuning']} | "
              f"{r['generate_vs_peft_p_tuning']} | {r['peak_memory_mib']} |" for r in rows]  # fmt: skip
    print(f"{result['device']}, {args.dtype}, batch 8 x {args.length} tokens\n\n" + "\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
