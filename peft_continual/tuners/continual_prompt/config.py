"""``ContinualPromptConfig``: the PEFT config of continual multi-task p-tuning.

One config describes every task the adapter knows: the tasks frozen in the prompt table (with their token counts,
so a saved table can be rebuilt before its weights are loaded) and the tasks the open round's encoder is training.
It is a plain ``PeftConfig`` whose fields all survive ``save_pretrained``/``from_pretrained`` as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from peft import PeftConfig
from peft.utils import CONFIG_NAME

from peft_continual.data.templates import TaskTemplate, check_unique_tasknames
from peft_continual.errors import ConfigError, DuplicateTaskError, TemplateError, allowed
from peft_continual.models import local_base_name, portable_name
from peft_continual.tuners.continual_prompt._peft_compat import PEFT_TYPE
from peft_continual.tuners.continual_prompt.config_fields import check_field_types, positive_int, refuse_unknown_fields
from peft_continual.tuners.continual_prompt.stacked import active_stacked_names, stacked_config_dicts


class EncoderType(str, Enum):
    """How the virtual tokens of tasks in training are produced."""

    LSTM = "lstm"
    """NeMo's p-tuning encoder: bidirectional LSTM over task-conditioned inputs, then a 2-layer MLP head."""
    MLP = "mlp"
    """P-tuning with an MLP instead of the LSTM."""
    EMBEDDING = "embedding"
    """Plain prompt tuning: each task owns a trainable ``(n, D)`` matrix."""


class PromptInit(str, Enum):
    """Where the virtual tokens of a task start."""

    TEXT = "text"
    """The embeddings of the task's init text; ``lstm``/``mlp`` learn a correction on top, zero at the start."""
    RANDOM = "random"
    """NeMo's p-tuning: the encoder's output alone, from inputs at ``nn.Embedding``'s scale; ``embedding``: the
    embeddings of random vocabulary tokens. The behaviour of adapters saved before ``prompt_init`` existed."""


DEFAULT_MAX_ENCODER_HIDDEN_SIZE = 256
"""``encoder_hidden_size=None`` resolves to ``min(base hidden size, this)``."""


def check_first_trained_layer(first_trained_layer: Any, prompt_depth: int, prompt_init: PromptInit) -> None:
    """Refuse a ``first_trained_layer`` outside ``[0, prompt_depth)``, or above 0 without a text start: the slices below
    it are held at the init text's embeddings (and zero), which ``prompt_init="random"`` does not have."""
    if not isinstance(first_trained_layer, int) or isinstance(first_trained_layer, bool) or first_trained_layer < 0:
        raise ConfigError(f"first_trained_layer must be a non-negative integer, got {first_trained_layer!r}")
    if first_trained_layer >= prompt_depth:
        raise ConfigError(
            f"first_trained_layer={first_trained_layer} leaves no slice to train at prompt_depth={prompt_depth}; "
            f"it must be less than prompt_depth (deep prompts: prompt_depth > 1)"
        )
    if first_trained_layer and prompt_init != PromptInit.TEXT:
        raise ConfigError(
            f"first_trained_layer={first_trained_layer} holds the lower layers' slices at the init text, but "
            f"prompt_init={prompt_init.value!r}; use prompt_init='text'"
        )


def default_encoder_hidden_size(token_dim: int) -> int:
    """The encoder width ``encoder_hidden_size=None`` means: the base model's width, at most 256."""
    return min(token_dim, DEFAULT_MAX_ENCODER_HIDDEN_SIZE)


@dataclass
class ContinualPromptConfig(PeftConfig):
    """Configuration of continual multi-task p-tuning (``PeftType.CONTINUAL_PROMPT``).

    Args:
        task_type: PEFT's task type; only ``CAUSAL_LM``.
        templates: Every task's template (``TaskTemplate`` or its ``to_dict()``), frozen tasks and tasks in training.
        encoder_type: ``lstm`` (default), ``mlp`` or ``embedding``.
        encoder_hidden_size: Hidden size of the LSTM/MLP; ``None`` means the base model's hidden size capped at
            ``DEFAULT_MAX_ENCODER_HIDDEN_SIZE`` (256): on SmolLM2-135M (width 576) the capped LSTM has 3.9M instead
            of 15.3M parameters, trains as fast and was as accurate or better (``docs/content/benchmarks.md``).
        encoder_num_layers: LSTM layers, or linear layers of the MLP.
        encoder_dropout: Dropout inside the encoder.
        prompt_depth: Layers whose input holds each task's virtual tokens: 1 (default) the input embeddings
            (p-tuning, prompt tuning); ``k > 1`` also the inputs of decoder layers ``1..k-1`` (deep prompts, P-tuning
            v2; see ``deep_prompts``), at most the base model's number of layers. Prompts and table rows are
            ``(n_T, k * D)``.
        first_trained_layer: Deep prompts: the lowest layer whose slice is trained. The slices of the layers below
            stay where they start (the init text's embeddings at the input, zero above) and no gradient flows below
            this layer, so a training step skips that part of the backward pass (``deep_prompts``); 0 (default)
            trains every slice.
        prompt_init: ``text`` (default): each task's virtual tokens start as the token embeddings of its init text
            (the template's ``init_text``, else this config's ``init_text``, else the task name, repeated to fill
            them), and ``lstm``/``mlp`` learn a correction on top that is zero at the start; ``random``: NeMo's
            encoder output alone (``embedding``: random vocabulary tokens). See ``TaskPromptEncoder``.
        init_text: Init text of every task whose template has none (``prompt_init="text"``).
        tokenizer_name_or_path: Tokenizer for task names and ``init_text``; defaults to the base model's path.
        taskname_token_ids: Token ids of each task name (filled when the model is built).
        frozen_tasks: Tasks stored in the prompt table, with their token counts (filled by ``freeze_tasks``).
        training_tasks: Tasks trained by the encoder of the open round; default: every template not frozen.
        init_token_ids: Task name -> token ids of its init text (filled when the model is built).
        token_dim: The base model's hidden size ``D`` (filled when the model is built).
        base_model_fingerprint: Hidden size, vocabulary size and embedding hash of the base model the adapter was
            built on (filled when the model is built; checked whenever it is built again, e.g. on load).
        stacked_adapters: LoRA or IA3 adapters that live on the same base model as the prompts and are trained,
            saved, loaded and switched with them: a ``LoraConfig``/``IA3Config`` (named after its type, ``lora`` or
            ``ia3``), or adapter name -> config. Stored as JSON dicts (see ``peft_continual.tuners.continual_prompt.stacked``).
        active_stacked_adapters: Stacked adapters active for rows without ``adapter_names``; default: the first.

    Examples:
        >>> from peft_continual.data.templates import TaskTemplate
        >>> t = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label")
        >>> config = ContinualPromptConfig(templates=[t], encoder_hidden_size=32)
        >>> config.training_tasks, config.frozen_tasks, config.encoder_type.value
        (['sentiment'], {}, 'lstm')
    """

    task_type: str | None = field(default="CAUSAL_LM", metadata={"help": "PEFT task type; only `CAUSAL_LM`."})
    templates: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "Task templates (frozen tasks and tasks in training); TaskTemplate objects become dicts."},
    )
    encoder_type: EncoderType = field(
        default=EncoderType.LSTM,
        metadata={"help": "`lstm` (NeMo: bi-LSTM + MLP head), `mlp`, or `embedding` (plain prompt tuning)."},
    )
    encoder_hidden_size: int | None = field(
        default=None,
        metadata={"help": "Hidden size of the LSTM/MLP; None: the base model's hidden size, at most 256."},
    )
    encoder_num_layers: int = field(default=2, metadata={"help": "LSTM layers, or linear layers of the MLP."})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout probability inside the encoder."})
    prompt_depth: int = field(
        default=1,
        metadata={
            "help": "Layers whose input holds the virtual tokens: 1 = the input embeddings; k > 1 also decoder layers "
            "1..k-1 (deep prompts, P-tuning v2), at most the base model's layer count."
        },
    )
    first_trained_layer: int = field(
        default=0,
        metadata={
            "help": "Deep prompts: the lowest layer whose slice is trained; the layers below keep the init text (no "
            "backward pass through them: a cheaper step). 0 = every slice; less than prompt_depth."
        },
    )
    prompt_init: PromptInit = field(
        default=PromptInit.TEXT,
        metadata={
            "help": "`text`: virtual tokens start as the embeddings of each task's init text (lstm/mlp learn a "
            "correction, zero at the start); `random`: NeMo's encoder output alone (embedding: random tokens)."
        },
    )
    init_text: str | None = field(
        default=None,
        metadata={"help": "Init text of every task whose template has none; None: the task name (prompt_init=text)."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer for task names and init_text when their ids are missing; default: the base model."
        },
    )
    taskname_token_ids: dict[str, list[int]] = field(
        default_factory=dict,
        metadata={"help": "Token ids of each task name; the encoder's input is conditioned on them. Filled on build."},
    )
    init_token_ids: dict[str, list[int]] = field(
        default_factory=dict, metadata={"help": "Token ids of each task's init text; filled when the model is built."}
    )
    frozen_tasks: dict[str, int] = field(
        default_factory=dict, metadata={"help": "Tasks stored in the prompt table -> their number of virtual tokens."}
    )
    training_tasks: list[str] | None = field(
        default=None, metadata={"help": "Tasks trained in the open round; None: every template not in frozen_tasks."}
    )
    token_dim: int | None = field(default=None, metadata={"help": "Hidden size of the base model; filled on build."})
    base_model_fingerprint: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Hidden size, vocabulary size and embedding hash of the base model; checked on load."},
    )
    stacked_adapters: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "LoRA/IA3 adapters on the same base, trained, saved and loaded with the prompts: a LoraConfig or "
            "IA3Config (named 'lora'/'ia3'), or adapter name -> config (or its to_dict())."
        },
    )
    active_stacked_adapters: list[str] | None = field(
        default=None,
        metadata={"help": "Stacked adapters active for rows without adapter_names; None: the first one."},
    )
    peft_continual_version: str | None = field(
        default=None,
        metadata={
            "help": "Version of peft-continual that saved this config (written by save_pretrained; None before): a "
            "config from a newer version with fields this one does not know is refused with the version to install."
        },
    )

    def __post_init__(self) -> None:
        if self.task_type != "CAUSAL_LM":
            raise ConfigError(f"task_type={self.task_type!r} is not supported; allowed: 'CAUSAL_LM'")
        super().__post_init__()
        self.peft_type = PEFT_TYPE
        if not isinstance(self.templates, (list, tuple)):
            raise ConfigError(f"templates must be a list of templates, got {self.templates!r}")
        self.templates = [self._template_dict(t, i) for i, t in enumerate(self.templates)]
        try:
            self.encoder_type = EncoderType(self.encoder_type)
        except ValueError:
            raise ConfigError(
                f"encoder_type={self.encoder_type!r} is not one of {allowed(e.value for e in EncoderType)}"
            ) from None
        try:
            self.prompt_init = PromptInit(self.prompt_init)
        except ValueError:
            raise ConfigError(
                f"prompt_init={self.prompt_init!r} is not one of {allowed(p.value for p in PromptInit)}"
            ) from None
        self._check_numbers()
        check_field_types(self)
        self._check_tasks()
        self.stacked_adapters = stacked_config_dicts(self.stacked_adapters)
        self.active_stacked_adapters = active_stacked_names(self.stacked_adapters, self.active_stacked_adapters)
        self.base_model_name_or_path = local_base_name(self.base_model_name_or_path)

    def to_dict(self) -> dict[str, Any]:
        """PEFT's dict of the fields (what ``adapter_config.json`` holds), with the base model named so that another
        machine resolves it: ``embedded`` for the embedded model's cache folder, never this machine's path."""
        data = super().to_dict()
        data["base_model_name_or_path"] = portable_name(data.get("base_model_name_or_path"))
        return data

    @staticmethod
    def _template_dict(template: TaskTemplate | Mapping[str, Any], index: int) -> dict[str, Any]:
        if isinstance(template, TaskTemplate):
            return template.to_dict()
        if not isinstance(template, Mapping):
            raise TemplateError(f"templates[{index}] must be a TaskTemplate or a dict, got {type(template).__name__}")
        return TaskTemplate.from_dict(template, source=f"templates[{index}]").to_dict()

    def _check_numbers(self) -> None:
        if self.encoder_hidden_size is not None and not positive_int(self.encoder_hidden_size):
            raise ConfigError(
                f"encoder_hidden_size must be a positive integer or None, got {self.encoder_hidden_size!r}"
            )
        if not positive_int(self.encoder_num_layers):
            raise ConfigError(f"encoder_num_layers must be a positive integer, got {self.encoder_num_layers!r}")
        if not positive_int(self.prompt_depth):
            raise ConfigError(f"prompt_depth must be a positive integer, got {self.prompt_depth!r}")
        check_first_trained_layer(self.first_trained_layer, self.prompt_depth, self.prompt_init)
        if not isinstance(self.encoder_dropout, (int, float)) or not 0 <= self.encoder_dropout < 1:
            raise ConfigError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout!r}")
        if self.init_text is not None and (not isinstance(self.init_text, str) or not self.init_text.strip()):
            raise ConfigError(f"init_text must be a non-empty string or None, got {self.init_text!r}")

    def _check_tasks(self) -> None:
        by_name = check_unique_tasknames(self.task_templates())
        empty = [name for name, template in by_name.items() if template.total_virtual_tokens == 0]
        if empty:
            raise ConfigError(
                f"task(s) {empty} have total_virtual_tokens=0; a prompt adapter needs at least 1 per task"
            )
        for name, count in self.frozen_tasks.items():
            if name not in by_name:
                raise ConfigError(f"frozen task {name!r} has no template; templates: {allowed(by_name)}")
            if count != by_name[name].total_virtual_tokens:
                raise ConfigError(
                    f"frozen task {name!r} has {count} rows in the table but its template has "
                    f"total_virtual_tokens={by_name[name].total_virtual_tokens}"
                )
        if self.training_tasks is None:
            self.training_tasks = [name for name in by_name if name not in self.frozen_tasks]
        self.training_tasks = list(self.training_tasks)
        if len(set(self.training_tasks)) != len(self.training_tasks):
            raise DuplicateTaskError(f"training_tasks={self.training_tasks} names a task twice")
        both = sorted(set(self.training_tasks) & set(self.frozen_tasks))
        if both:
            raise DuplicateTaskError(f"task(s) {both} are both frozen in the table and in training")
        unlisted = sorted(set(by_name) - set(self.training_tasks) - set(self.frozen_tasks))
        unknown = sorted(set(self.training_tasks) - set(by_name))
        if unlisted or unknown:
            raise ConfigError(
                f"every template must be either frozen or in training: templates not listed {unlisted}, "
                f"training_tasks without a template {unknown}"
            )

    # ------------------------------------------------------------------ views
    def task_templates(self) -> list[TaskTemplate]:
        """The templates as ``TaskTemplate`` objects, in config order."""
        return [TaskTemplate.from_dict(t, source=f"templates[{i}]") for i, t in enumerate(self.templates)]

    def token_counts(self) -> dict[str, int]:
        """Task name -> ``total_virtual_tokens``, for every task of the config."""
        return {t["taskname"]: t["total_virtual_tokens"] for t in self.templates}

    def follow_table_change(self, event: str, taskname: str, new_name: str | None) -> None:
        """Keep ``frozen_tasks``, ``training_tasks``, ``templates`` and ``taskname_token_ids`` in step with the prompt
        table (its listener): ``event`` is ``add``, ``remove`` or ``rename`` (to ``new_name``)."""
        counts = self.token_counts()
        if event == "add":
            if taskname not in counts:
                raise ConfigError(f"task {taskname!r} has no template in the config; add_tasks([template]) first")
            self.frozen_tasks[taskname] = counts[taskname]
            self.training_tasks = [name for name in self.training_tasks if name != taskname]
        elif event == "remove":
            del self.frozen_tasks[taskname]
            self.templates = [t for t in self.templates if t["taskname"] != taskname]
            self.taskname_token_ids.pop(taskname, None)
        else:
            if new_name in counts:
                raise DuplicateTaskError(
                    f"cannot rename {taskname!r} to {new_name!r}: the adapter already has that task"
                )
            self.frozen_tasks = {new_name if k == taskname else k: v for k, v in self.frozen_tasks.items()}
            for template in self.templates:
                if template["taskname"] == taskname:
                    template["taskname"] = new_name
            if taskname in self.taskname_token_ids:
                self.taskname_token_ids[new_name] = self.taskname_token_ids.pop(taskname)

    # ------------------------------------------------------------------ token ids
    def tokenize_tasknames(self, tokenizer: Any) -> ContinualPromptConfig:
        """Fill ``taskname_token_ids`` (``lstm``/``mlp``) and ``init_token_ids`` of the tasks in training with
        ``tokenizer``; returns ``self``.

        The encoder is conditioned on the base model's embeddings of each task name, and the prompts start from the
        embeddings of each task's init text, so the ids must come from the base model's tokenizer. Ids already present
        are kept: a resumed round must see the same conditioning.
        """
        for name in self.training_tasks:
            if self.encoder_type != EncoderType.EMBEDDING and name not in self.taskname_token_ids:
                self.taskname_token_ids[name] = list(tokenizer(name, add_special_tokens=False)["input_ids"])
        self._init_ids_from_names()
        for name in self._tasks_needing_init_ids():
            ids = list(tokenizer(self.init_text_of(name), add_special_tokens=False)["input_ids"])
            if not ids:
                raise ConfigError(f"task {name!r}: its init text {self.init_text_of(name)!r} has no tokens")
            self.init_token_ids[name] = ids
        return self

    def init_text_of(self, taskname: str) -> str:
        """The text a task's virtual tokens start from: its template's ``init_text``, the config's, or the task name."""
        return self._explicit_init_text(taskname) or taskname

    def _explicit_init_text(self, taskname: str) -> str | None:
        template = next(t for t in self.templates if t["taskname"] == taskname)
        return template.get("init_text") or self.init_text

    def _tasks_needing_init_ids(self) -> list[str]:
        if self.prompt_init != PromptInit.TEXT:
            return []
        return [name for name in self.training_tasks if name not in self.init_token_ids]

    def _init_ids_from_names(self) -> None:
        """A task whose init text is its name starts from its name's ids, when the encoder has them already."""
        for name in self._tasks_needing_init_ids():
            if self._explicit_init_text(name) is None and self.taskname_token_ids.get(name):
                self.init_token_ids[name] = list(self.taskname_token_ids[name])

    def missing_token_ids(self) -> list[str]:
        """What the encoder of the open round still needs token ids for (task names, or init texts)."""
        self._init_ids_from_names()
        names = [n for n in self.training_tasks if self.encoder_type != EncoderType.EMBEDDING]
        missing = [name for name in names if name not in self.taskname_token_ids]
        from_names = {name for name in missing if self._explicit_init_text(name) is None}  # the name's ids will do
        return missing + [f"init text of {n}" for n in self._tasks_needing_init_ids() if n not in from_names]

    def resolve_token_ids(self, base_model_name_or_path: str | None, tokenizer: Any = None) -> None:
        """Make sure ``missing_token_ids()`` is empty, loading the tokenizer only if ids are missing.

        Raises:
            ConfigError: ids are missing and no tokenizer is given or can be loaded.
        """
        missing = self.missing_token_ids()
        if not missing:
            return
        if tokenizer is None:
            tokenizer = _load_tokenizer(self.tokenizer_name_or_path or base_model_name_or_path, missing)
        self.tokenize_tasknames(tokenizer)

    @classmethod
    def check_kwargs(cls, **kwargs: Any) -> dict[str, Any]:
        """PEFT's hook for a config read from ``adapter_config.json``: one written before ``prompt_init`` existed keeps
        the behaviour it was trained with (``random``; text for prompt tuning that had an ``init_text``)."""
        kwargs = super().check_kwargs(**kwargs)
        if "prompt_init" not in kwargs:
            old_text_init = kwargs.get("encoder_type") == EncoderType.EMBEDDING.value and kwargs.get("init_text")
            kwargs["prompt_init"] = PromptInit.TEXT.value if old_text_init else PromptInit.RANDOM.value
        old_ids = kwargs.pop("init_text_token_ids", None)
        if old_ids and "init_token_ids" not in kwargs:
            kwargs["init_token_ids"] = {name: list(old_ids) for name in kwargs.get("training_tasks") or []}
        refuse_unknown_fields({f.name for f in fields(cls)}, kwargs, PEFT_TYPE.value)
        return kwargs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any):
        """PEFT's loading of ``adapter_config.json``, with this library's errors naming the file: one that is not JSON
        (damaged, cut short: ``AdapterFileError`` from PEFT's reader, see ``compat``), holds an unknown field or a
        bad value is refused, never half-read."""
        file = Path(pretrained_model_name_or_path, subfolder or "", CONFIG_NAME)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except (ConfigError, TemplateError) as error:  # a damaged file: AdapterFileError from PEFT's reader already
            raise type(error)(f"{file}: {error}") from None


def _load_tokenizer(name_or_path: str | None, missing: Sequence[str]) -> Any:
    hint = (
        "pass tokenizer_name_or_path, call config.tokenize_tasknames(tokenizer) before get_peft_model, "
        "or pass tokenizer= to add_tasks"
    )
    if not name_or_path:
        raise ConfigError(f"token ids are missing for {list(missing)} and the base model has no name_or_path: {hint}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"token ids are missing for {list(missing)} and no tokenizer loads from {name_or_path!r} ({error}): {hint}"
        ) from None
