"""A recipe's check, in seconds, that the whole path of a run works on this machine, before the long parts start.

A run that breaks at its first training step after a 20-minute baseline, or after round 1, costs the user that time
and ends in a traceback from deep inside torch. So the continual recipe first runs everything once on a few rows:
load the base model, build round 1's model, one forward/backward in the chosen precision, freeze, save and load the
table, every later round's model (one step each), and one mixed-task ``generate`` from the frozen table and one from
the plain base. Any failure becomes a ``PreflightError`` that names the stage, the device, the precision and the
cause; a training loss or gradient that is not finite fails too.

The check runs on the run's own base model (no second copy in memory) and leaves it as it found it: frozen
weights, eval mode, no gradients. Only prompt adapters are built on it, which inject no layers into the base.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from peft_continual.answer_loss import accepts_logit_positions, labelled_positions, loss_at_positions
from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import TokenizedExample
from peft_continual.errors import PeftContinualError, PreflightError
from peft_continual.evaluation.generate import generate_token_ids
from peft_continual.precision import PrecisionChoice, cpu_name


@contextlib.contextmanager
def preflight_stage(stage: str, choice: PrecisionChoice) -> Iterator[None]:
    """Turn any failure inside into a ``PreflightError`` naming ``stage``, the device and precision, and the cause.

    Our own errors (a bad config, a record that does not fit) pass unchanged: their messages already say what to fix.
    """
    try:
        yield
    except PeftContinualError:
        raise
    except Exception as error:
        device = torch.cuda.get_device_name() if choice.device == "cuda" else f"{choice.device} ({cpu_name()})"
        hint = (
            " Mixed precision is the usual cause of a failure that only some machines show: try --precision fp32."
            if choice.autocast_dtype is not None
            else ""
        )
        raise PreflightError(
            f"the check before the run failed at '{stage}' on {device} in {choice.precision.value}: "
            f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}.{hint} "
            "Nothing long has run yet."
        ) from error


def training_step(
    model: Any, examples: Sequence[TokenizedExample], pad_token_id: int, choice: PrecisionChoice
) -> float:
    """One forward and backward of ``model`` on ``examples`` in ``choice``'s precision, as ``ContinualTrainer`` runs
    it (autocast around the forward, the loss of labelled positions); the gradients are cleared afterwards.

    Returns:
        The loss.

    Raises:
        PreflightError: the loss or a gradient is not finite.
    """
    collate = ContinualPromptCollator(pad_token_id=pad_token_id)
    device = next(p for p in model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collate(list(examples)).items()}
    labels = batch.pop("labels")
    model.train()
    dtype = choice.autocast_dtype
    with torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        if accepts_logit_positions(model):
            positions = labelled_positions(labels)
            loss = loss_at_positions(model(**batch, logits_to_keep=positions).logits, labels, positions)
        else:
            loss = model(**batch, labels=labels).loss
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    finite = math.isfinite(loss.item()) and all(p.grad is None or bool(p.grad.isfinite().all()) for p in trainable)
    model.zero_grad(set_to_none=True)
    if not finite:
        raise PreflightError(
            f"one training step in {choice.precision.value} on {choice.device} gave a loss of {loss.item()} or "
            "non-finite gradients; try --precision fp32"
        )
    return loss.item()


def check_continual_run(
    base: Any,
    tokenizer: Any,
    first_round_config: Any,
    rounds: Sequence[Sequence[TaskTemplate]],
    train_examples: Sequence[Sequence[TokenizedExample]],
    prompt_examples: Sequence[TokenizedExample],
    plain_prompt_examples: Sequence[TokenizedExample],
    choice: PrecisionChoice,
) -> str:
    """Run every stage of a continual run once, on a few rows, and say how long each took.

    Args:
        base: The run's base model, on the device it trains on.
        tokenizer: Its tokenizer.
        first_round_config: The ``ContinualPromptConfig`` of round 1 (copied, not changed).
        rounds: The templates of each round's new tasks (round 1 first).
        train_examples: Per round, a few training examples of its tasks (``include_answer=True``).
        prompt_examples: Prompts (``include_answer=False``) of every task, for one mixed-task ``generate``.
        plain_prompt_examples: Prompts without virtual tokens (the few-shot baseline's), for the plain base model.
        choice: Device and precision of training.

    Returns:
        One line: each stage and its seconds.

    Raises:
        PreflightError: a stage failed (see ``preflight_stage``).
    """
    from peft import PeftModel, get_peft_model

    timings: list[str] = []

    @contextlib.contextmanager
    def stage(name: str) -> Iterator[None]:
        started = time.perf_counter()
        with preflight_stage(name, choice):
            yield
        timings.append(f"{name} {time.perf_counter() - started:.1f}s")

    trainable_before = {name: p.requires_grad for name, p in base.named_parameters()}
    was_training, had_peft_config = base.training, "peft_config" in vars(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with tempfile.TemporaryDirectory(prefix="peft-continual-preflight-") as folder:
        for number, (templates, examples) in enumerate(zip(rounds, train_examples, strict=True), start=1):
            with stage(f"round {number}: build the model"):
                if number == 1:
                    model = get_peft_model(base, copy.deepcopy(first_round_config))
                else:
                    model.freeze_tasks()
                    model.save_pretrained(f"{folder}/round_{number - 1}")
                    model = PeftModel.from_pretrained(base, f"{folder}/round_{number - 1}", is_trainable=True)
                    model.add_tasks(list(templates), tokenizer=tokenizer)
            with stage(f"round {number}: one training step ({choice.precision.value})"):
                training_step(model, examples, pad, choice)
        with stage("generate from the frozen table, tasks mixed"):
            model.freeze_tasks()
            generate_token_ids(model, prompt_examples, pad_token_id=pad, eos_token_id=None, max_new_tokens=2,
                               batch_size=len(prompt_examples), progress=False)  # fmt: skip
        if plain_prompt_examples:
            with stage("generate from the plain base model"):
                generate_token_ids(base, plain_prompt_examples, pad_token_id=pad, eos_token_id=None, max_new_tokens=2,
                                   batch_size=len(plain_prompt_examples), pass_virtual_tokens=False, progress=False)  # fmt: skip
    for name, parameter in base.named_parameters():
        parameter.requires_grad_(trainable_before[name])
        parameter.grad = None
    base.train(was_training)
    if not had_peft_config:
        vars(base).pop("peft_config", None)  # PEFT records its config on the model it wraps (as its unload undoes)
    del model
    gc.collect()
    return "check before the run passed: " + ", ".join(timings)
