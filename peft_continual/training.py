"""Training with ``transformers.Trainer``: arguments with prompt-learning defaults, and a trainer that resumes.

Nothing here replaces ``Trainer``: the method's model is a ``PeftModel`` whose forward takes the batch of
``ContinualPromptCollator`` (with ``virtual_token_mask`` and ``tasknames``), so the stock training loop, checkpoints,
``resume_from_checkpoint``, ``load_best_model_at_end`` and ``accelerate launch`` (DDP) all apply unchanged. The
subclass of ``TrainingArguments`` changes defaults that are wrong for this method and chooses the precision from the
hardware (``peft_continual.precision``); the subclass of ``Trainer`` computes the loss from the logits of labelled
positions only (``peft_continual.answer_loss``: the same loss, a faster step) and adds task accuracy on held-out
records to its evaluations (``ValidationAccuracy``), the way ``transformers`` asks for metrics that need generation
(override the evaluation, as ``Seq2SeqTrainer`` does).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput, get_last_checkpoint

from peft_continual.answer_loss import accepts_logit_positions, labelled_positions, loss_at_positions
from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.length_sampler import TaskMixedLengthSampler
from peft_continual.data.tokenize import TokenizedExample
from peft_continual.errors import ConfigError
from peft_continual.evaluation.during_training import ValidationAccuracy
from peft_continual.precision import Precision, choose_precision, device_type

logger = logging.getLogger(__name__)

GROUP_BY_LENGTH_PER_TASK = "group_by_length_per_task"


@functools.cache
def _log_once(message: str) -> None:
    """Log a line once per process (``dataclasses.replace`` of the arguments chooses the precision again)."""
    logger.info(message)


@dataclass
class ContinualTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with defaults for continual p-tuning.

    > Defaults changed from ``TrainingArguments``

    - ``remove_unused_columns=False``: the batch's ``tasknames`` and ``virtual_token_mask`` are not arguments of the
      base model's ``forward``, and ``Trainer`` would otherwise drop them.
    - ``label_names=["labels"]``: ``Trainer`` cannot infer it through the ``PeftModel`` wrapper.
    - ``learning_rate=1e-3``: prompt encoders train at rates far above full fine-tuning (PEFT's P_TUNING examples
      and NeMo use 1e-3 to 1e-4).
    - ``warmup_steps=0.06``: 6% of the steps as linear warm-up.
    - ``logging_steps=10``, ``save_total_limit=2``.
    - ``dataloader_pin_memory=False`` when training runs on the CPU (pinned memory only speeds up copies to a GPU).

    > Added

    - ``train_sampling_strategy="group_by_length_per_task"``: batches that keep the mix of tasks while each task's
      rows in a batch have similar lengths (``peft_continual.data.length_sampler``); on the demo's data it cuts the
      padded tokens of round 1 from 30% to 15% and of round 2 from 40% to 2% (``bench/padding.py``).
    - ``start_rows_learning_rate``, ``stacked_learning_rate``: their own peak rates for the rows the prompts start
      from and for LoRA/IA3 stacked under the prompts (``param_groups``), with the optimizer ``--optim`` names and its
      ``--adam_*`` settings.
    - ``precision`` (``auto``, ``bf16``, ``fp16``, ``fp32``): ``auto`` chooses from the hardware (see
      ``peft_continual.precision``) and sets ``bf16``/``fp16`` (and ``use_cpu`` for bf16 on a CPU-only machine, which
      transformers requires). ``--bf16 true``/``--fp16 true`` are read as ``precision`` asked for by name. A device
      that cannot run the precision asked for raises ``PrecisionError`` here, before any work. The choice and its
      reason are in ``precision_choice`` (``str()`` of it is one log line).

    Examples:
        >>> args = ContinualTrainingArguments(output_dir="out", max_steps=10, precision="fp32")
        >>> args.remove_unused_columns, args.label_names, args.bf16
        (False, ['labels'], False)
    """

    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep `tasknames`/`virtual_token_mask` in the batch (must stay False)."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Batch keys holding the labels."}
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of AdamW."})
    warmup_steps: float = field(default=0.06, metadata={"help": "Warm-up steps, or a fraction of all steps if < 1."})
    logging_steps: float = field(default=10, metadata={"help": "Log the training loss every N steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept in `output_dir`."})
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "Training order: `random`, `sequential`, `group_by_length`, `batch_rebalance` (transformers') or "
            f"`{GROUP_BY_LENGTH_PER_TASK}`: mixed-task batches with little padding (TaskMixedLengthSampler).",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance", GROUP_BY_LENGTH_PER_TASK],
        },
    )
    start_rows_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the text rows the prompts start from (prompt_init=text); the encoder trains "
            "at --learning_rate. None: --learning_rate for both."
        },
    )
    stacked_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate of LoRA/IA3 stacked under the prompts. None: --learning_rate."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "Training precision: `auto` (bf16 on GPUs and CPUs with bf16 hardware, fp16 on older GPUs, fp32 "
            "on other CPUs), or `bf16`, `fp16`, `fp32` (refused before any work where the device cannot run it)."
        },
    )

    def __post_init__(self) -> None:
        self.precision_choice = choose_precision(self._requested_precision(), device_type(self.use_cpu))
        self.bf16 = self.precision_choice.precision is Precision.BF16
        self.fp16 = self.precision_choice.precision is Precision.FP16
        if self.precision_choice.device == "cpu":
            # Say that the CPU is meant: transformers refuses bf16 without a GPU otherwise, and under accelerate launch
            # or torchrun on a machine without a GPU it would see no distributed setup (each process training alone
            # on all the data) where use_cpu gives DDP over gloo.
            self.use_cpu = True
            self.dataloader_pin_memory = False
            for name, variable in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED")):
                if os.environ.get(variable, "").lower() in ("1", "true"):
                    logger.warning(f"{name} runs on GPUs only (accelerate); on this CPU the processes train with DDP, "
                                   "each holding the whole model")  # fmt: skip  # pinned memory only speeds up copies to a GPU (torch warns on CPU)
        _log_once(str(self.precision_choice))
        super().__post_init__()

    def _requested_precision(self) -> Precision:
        """``precision``, or the one that ``--bf16``/``--fp16`` name; refuses flags that contradict each other."""
        try:
            requested = Precision(self.precision)
        except ValueError:
            raise ConfigError(
                f"--precision {self.precision!r} is not one of {', '.join(p.value for p in Precision)}"
            ) from None
        flags = [name for name in ("bf16", "fp16") if getattr(self, name)]
        if len(flags) > 1:
            raise ConfigError("--bf16 true and --fp16 true contradict each other; give --precision instead")
        if flags and requested not in (Precision.AUTO, Precision(flags[0])):
            raise ConfigError(f"--{flags[0]} true contradicts --precision {requested.value}; give only --precision")
        return Precision(flags[0]) if flags else requested


class ContinualTrainer(Trainer):
    """``Trainer`` with the loss from labelled positions only, whose evaluations also score held-out records per
    task (``validation_accuracy``).

    The loss is transformers' causal-LM loss (the same value and gradients, with ``num_items_in_batch`` under
    gradient accumulation) from the logits of the positions that predict a label (``peft_continual.answer_loss``);
    models that cannot give those (PEFT's own prompt learning shifts the positions) get ``Trainer``'s computation, and
    so does a ``label_smoother`` or ``compute_loss_func``. ``outputs.logits`` of the training loss hold only those
    positions.

    The scores join ``eval_loss`` in the same metrics dict, before logging and callbacks, so
    ``metric_for_best_model="task_accuracy"`` (with ``load_best_model_at_end``) and ``EarlyStoppingCallback`` work on
    them like on any Trainer metric, and the checkpoint Trainer keeps as best is the one with the best accuracy.
    Under ``accelerate launch`` every process scores all the records (the same numbers on each).
    """

    def __init__(self, *args: Any, validation_accuracy: ValidationAccuracy | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.validation_accuracy = validation_accuracy
        self.task_length_sampler: TaskMixedLengthSampler | None = None
        self.add_callback(_SamplerEpoch(self))

    def create_optimizer(self, model: Any = None) -> Any:
        """Trainer's optimizer (``--optim``, ``--adam_*``, ``--weight_decay``); with ``start_rows_learning_rate`` or
        ``stacked_learning_rate`` set, over ``param_groups`` with those rates."""
        rates = (self.args.start_rows_learning_rate, self.args.stacked_learning_rate)
        if self.optimizer is not None or rates == (None, None):
            return super().create_optimizer(model)
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
            raise ConfigError(f"--optim {self.args.optim} builds its own parameter groups; it cannot take "
                              "--start_rows_learning_rate or --stacked_learning_rate")  # fmt: skip
        groups = param_groups(
            model,
            prompt_lr=self.args.learning_rate,
            stacked_lr=self.args.stacked_learning_rate or self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            start_rows_lr=self.args.start_rows_learning_rate,
        )
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.args.train_sampling_strategy != GROUP_BY_LENGTH_PER_TASK:
            return super()._get_train_sampler(train_dataset)
        lengths, tasknames = _lengths_and_tasks(self.train_dataset if train_dataset is None else train_dataset,
                                                self.args.length_column_name)  # fmt: skip
        self.task_length_sampler = TaskMixedLengthSampler(
            lengths,
            tasknames,
            # one step's rows of every process: the order is then the same for 1 process at batch B and N at B/N
            # (accelerate gives process i the i-th slice of each step's rows), so a run resumes in another count
            self.args.train_batch_size * self.args.world_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
        return self.task_length_sampler

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs.get("labels")
        if (
            labels is None
            or self.label_smoother is not None
            or self.compute_loss_func is not None
            or not accepts_logit_positions(self.accelerator.unwrap_model(model))
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        positions = labelled_positions(labels)
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=positions)
        # Trainer divides the loss by the accumulation steps itself unless the model normalises by num_items_in_batch
        items = num_items_in_batch if self.model_accepts_loss_kwargs else None
        loss = loss_at_positions(outputs.logits, labels, positions, items)
        if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs and items is not None:
            data_parallel = self.accelerator.num_processes // getattr(self, "get_tp_size", lambda: 1)()
            loss = loss * (data_parallel if self.args.n_gpu <= 1 else self.args.n_gpu)  # as Trainer.compute_loss
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if self.validation_accuracy is not None and description == "Evaluation":  # not for Trainer.predict
            with self.autocast_smart_context_manager():
                output.metrics.update(self.validation_accuracy(self.model, metric_key_prefix))
        return output


class _SamplerEpoch(TrainerCallback):
    """Gives ``TaskMixedLengthSampler`` the epoch before each epoch's batches are drawn: ``accelerate`` wraps the
    batches of a multi-process run in a ``BatchSamplerShard``, which does not pass ``set_epoch`` on, and a resumed
    run must skip batches of the resumed epoch's own order."""

    def __init__(self, trainer: ContinualTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.task_length_sampler is not None:
            # state.epoch is the fraction of epochs done: 1.5 when resumed half-way through the second epoch
            self.trainer.task_length_sampler.set_epoch(math.floor(state.epoch + 1e-6))


def _lengths_and_tasks(dataset: Any, length_column: str) -> tuple[list[int], list[str]]:
    """Each training row's token count and task: from dict rows, ``TokenizedExample`` rows or a ``datasets.Dataset``
    (its ``length_column`` when it has one, else its ``input_ids``)."""
    if isinstance(dataset, list):
        rows = [row.to_dict() if isinstance(row, TokenizedExample) else row for row in dataset]
        if all(isinstance(row, dict) and "input_ids" in row and "taskname" in row for row in rows):
            return [len(row["input_ids"]) for row in rows], [row["taskname"] for row in rows]
    columns = getattr(dataset, "column_names", None) or []
    if "taskname" in columns and ("input_ids" in columns or length_column in columns):
        lengths = dataset[length_column] if length_column in columns else [len(ids) for ids in dataset["input_ids"]]
        return list(lengths), list(dataset["taskname"])
    raise ConfigError(
        f"train_sampling_strategy={GROUP_BY_LENGTH_PER_TASK} needs training rows with `input_ids` and `taskname` "
        "(TokenizedExample rows, dicts, or a Dataset with those columns)"
    )


def build_trainer(
    model: Any,
    args: ContinualTrainingArguments,
    train_dataset: Any,
    pad_token_id: int,
    eval_dataset: Any = None,
    virtual_tokens: bool = True,
    validation_accuracy: ValidationAccuracy | None = None,
    **trainer_kwargs: Any,
) -> Trainer:
    """A ``Trainer`` for a continual-prompt ``PeftModel`` on tokenized examples of any mix of tasks.

    With ``virtual_tokens=False`` it trains a model that takes only text (a LoRA/IA3 ``PeftModel``, a full fine-tune)
    on the same examples, tokenized with ``template.without_virtual_tokens()``: the baselines of the recipes.

    Args:
        model: The ``PeftModel`` (from ``get_peft_model`` or ``PeftModel.from_pretrained(..., is_trainable=True)``).
        args: Training arguments.
        train_dataset: ``TokenizedExample``s (a list) or a tokenized ``datasets.Dataset``.
        pad_token_id: Padding id of the tokenizer (right padding is used for training).
        eval_dataset: Optional held-out examples, for ``eval_loss`` and best-checkpoint selection.
        virtual_tokens: Give the model ``virtual_token_mask``/``tasknames`` (see ``ContinualPromptCollator``).
        validation_accuracy: Score held-out records per task at each evaluation (``eval_<task>_accuracy``,
            ``eval_task_accuracy``); needs ``eval_dataset`` too, since ``Trainer`` only evaluates when it has one.
        trainer_kwargs: Passed to ``Trainer`` (callbacks, ``compute_metrics``...).
    """
    if validation_accuracy is not None and eval_dataset is None:
        raise ConfigError("validation_accuracy needs an eval_dataset: Trainer only evaluates when it has one")
    return ContinualTrainer(
        model=model,
        args=args,
        train_dataset=_as_rows(train_dataset),
        eval_dataset=_as_rows(eval_dataset),
        data_collator=ContinualPromptCollator(pad_token_id=pad_token_id, virtual_tokens=virtual_tokens),
        validation_accuracy=validation_accuracy,
        **trainer_kwargs,
    )


def _as_rows(dataset: Any) -> Any:
    """A list of ``TokenizedExample`` as dicts: ``Trainer``'s length-grouped sampler
    (``train_sampling_strategy="group_by_length"``) reads each row's ``input_ids``; other datasets pass unchanged."""
    if isinstance(dataset, list) and dataset and isinstance(dataset[0], TokenizedExample):
        return [example.to_dict() for example in dataset]
    return dataset


def train_or_resume(trainer: Trainer) -> Any:
    """Train, resuming from the last checkpoint in ``output_dir`` when one is there (a rerun after a crash)."""
    output_dir = trainer.args.output_dir
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last is not None:
        logger.info("resuming from %s", last)
    return trainer.train(resume_from_checkpoint=last)


def param_groups(
    model: nn.Module,
    prompt_lr: float,
    stacked_lr: float,
    weight_decay: float = 0.0,
    start_rows_lr: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups: the prompt encoders at ``prompt_lr``, everything else trainable at ``stacked_lr``.

    The rows a prompt starts from want prompt tuning's rate, the encoder a slow one, LoRA its own (measured on
    SmolLM2: ``recipes/configs/p_tuning_lora``). With ``transformers.Trainer``::

        optimizer = torch.optim.AdamW(param_groups(model, prompt_lr=3e-4, stacked_lr=1e-3, start_rows_lr=3e-2))
        trainer = Trainer(model=model, args=args, ..., optimizers=(optimizer, None))  # Trainer adds the scheduler

    Args:
        model: A ``PeftModel`` of this method (or its tuner).
        prompt_lr: Learning rate of the encoders of open rounds.
        stacked_lr: Learning rate of the LoRA/IA3 weights (and of any other trainable parameter, e.g. LoRA biases).
        weight_decay: Weight decay of every group.
        start_rows_lr: Learning rate of the rows the prompts start from (``prompt_init="text"``: the init text's
            embeddings, which the encoder corrects); ``None``: ``prompt_lr``. Free rows move like prompt tuning's,
            which wants a higher rate than an encoder.

    Returns:
        Up to three groups (start rows, encoders, stacked adapters); frozen parameters are left out, empty groups
        dropped.
    """
    tuner = getattr(model, "base_model", model)
    if not hasattr(tuner, "prompt_parameters"):
        raise ConfigError(f"separate learning rates need a continual-prompt model, not a {type(tuner).__name__}")
    prompt_ids = {id(p) for p in tuner.prompt_parameters()}
    start_ids = {id(p) for p in _start_row_parameters(tuner)} if start_rows_lr is not None else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in start_ids], "lr": start_rows_lr, "weight_decay": weight_decay},
        {
            "params": [p for p in trainable if id(p) in prompt_ids and id(p) not in start_ids],
            "lr": prompt_lr,
            "weight_decay": weight_decay,
        },
        {"params": [p for p in trainable if id(p) not in prompt_ids], "lr": stacked_lr, "weight_decay": weight_decay},
    ]
    return [group for group in groups if group["params"]]


def _start_row_parameters(tuner: nn.Module) -> Iterator[nn.Parameter]:
    """The start rows of every open round's encoder (none for NeMo's encoder or plain prompt tuning)."""
    for module in tuner.modules():
        start_rows = getattr(module, "start_rows", None)
        if isinstance(start_rows, nn.ParameterDict):
            yield from start_rows.parameters()
