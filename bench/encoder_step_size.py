"""How far the first optimizer steps move the virtual tokens: our encoder at several rates, and prompt tuning's rows.

    python bench/encoder_step_size.py [--steps 10] [--rates 1e-2:1e-2 1e-3:1e-2 3e-4:3e-2 0:3e-2]

Each rate pair is ``encoder:start_rows`` (``param_groups(prompt_lr=encoder, start_rows_lr=start_rows)``, what
``--learning_rate`` and ``--start_rows_learning_rate`` set); ``0:r`` trains the start rows alone, which is prompt
tuning at rate ``r``. For each pair, the p-tuning config's encoder (LSTM, width 256) is built on the embedded
SmolLM2 for the `sentiment` task (20 virtual tokens from its init text) and takes Adam steps on a fixed linear
objective: a gradient that keeps its direction, the worst case, and what the first steps from a loss far from its
minimum look like. Printed: the mean distance of the virtual tokens from their start after each step, in units of
the mean norm of a vocabulary embedding. The base model never runs: seconds, any machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peft import get_peft_model  # noqa: E402

from peft_continual import ContinualPromptConfig  # noqa: E402
from peft_continual.experiments.task_files import load_task_specs  # noqa: E402
from peft_continual.machine import machine_facts  # noqa: E402
from peft_continual.models import load_base_model  # noqa: E402
from peft_continual.training import param_groups  # noqa: E402


def distances(encoder_lr: float, rows_lr: float, steps: int, template, seed: int = 0) -> list[float]:
    """Mean distance of the task's virtual tokens from their start after each of ``steps`` Adam steps."""
    torch.manual_seed(seed)
    base, tokenizer = load_base_model("embedded")
    config = ContinualPromptConfig(task_type="CAUSAL_LM", templates=[template], encoder_hidden_size=256)
    model = get_peft_model(base, config.tokenize_tasknames(tokenizer))
    tuner = model.base_model
    optimizer = torch.optim.Adam(param_groups(model, prompt_lr=encoder_lr, stacked_lr=0.0, start_rows_lr=rows_lr))
    task = template.taskname
    with torch.no_grad():
        start = tuner.task_prompts([task])[task].clone()
    direction = torch.randn(start.shape, generator=torch.Generator().manual_seed(seed))
    token_norm = float(base.get_input_embeddings().weight.detach().float().norm(dim=-1).mean())
    moved = []
    for _ in range(steps):
        optimizer.zero_grad()
        (tuner.task_prompts([task])[task] * direction).sum().backward()
        optimizer.step()
        with torch.no_grad():
            moved.append(float((tuner.task_prompts([task])[task] - start).norm(dim=-1).mean()) / token_norm)
    return moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=str(ROOT / "recipes/configs/continual_p_tuning/tasks.yaml"))
    parser.add_argument("--taskname", default="sentiment")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rates", nargs="+", default=["1e-2:1e-2", "1e-3:1e-2", "3e-4:3e-2", "0:3e-2"])
    args = parser.parse_args()
    template = next(spec.template for spec in load_task_specs(args.tasks) if spec.taskname == args.taskname)
    facts = machine_facts()
    print(f"{facts['cpu']}, {facts['torch_threads']} torch threads, torch {facts['torch']}, peft {facts['peft']}, fp32")
    print(f"distance of the virtual tokens from their start, in token norms, after each Adam step ({args.taskname})")
    print("| encoder lr | start rows lr | " + " | ".join(f"step {i + 1}" for i in range(args.steps)) + " |")
    print("|---|---|" + "---|" * args.steps)
    for pair in args.rates:
        encoder_lr, rows_lr = (float(value) for value in pair.split(":"))
        moved = distances(encoder_lr, rows_lr, args.steps, template)
        print(f"| {encoder_lr:g} | {rows_lr:g} | " + " | ".join(f"{value:.3g}" for value in moved) + " |")


if __name__ == "__main__":
    main()
