"""``ContinualPromptModel``: the PEFT tuner of continual multi-task p-tuning.

``get_peft_model(base, ContinualPromptConfig(...))`` returns a ``PeftModelForCausalLM`` that wraps this tuner; its
methods (``freeze_tasks``, ``add_tasks``, ``prompt_table``...) are reachable on the ``PeftModel`` itself. Each batch
row names its task: rows of tasks in training take their virtual tokens from the encoder (run once per task present),
rows of finished tasks from the frozen prompt table, in the same batch. The tokens are written into the input
embeddings at the positions marked by ``virtual_token_mask``; the base model then runs on ``inputs_embeds``.

The round cycle: train (encoder) -> ``freeze_tasks()`` (encoder outputs copied into the table, encoder dropped) ->
``save_pretrained`` -> later ``PeftModel.from_pretrained(base, path, is_trainable=True)`` -> ``add_tasks([...])``
(fresh encoder for the new tasks; old rows stay frozen buffers) -> train -> ...
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from peft_continual.data.templates import TaskTemplate, check_unique_tasknames
from peft_continual.errors import ConfigError, RecordError, UnknownTaskError, allowed
from peft_continual.tuners.continual_prompt._peft_compat import ENCODER_ATTR, TABLE_ATTR, PeftTunerBase
from peft_continual.tuners.continual_prompt.config import (
    ContinualPromptConfig,
    default_encoder_hidden_size,
)
from peft_continual.tuners.continual_prompt.deep_prompts import (
    DeepPromptHooks,
    check_prompt_depth,
    layer_input_scales,
)
from peft_continual.tuners.continual_prompt.encoder import TaskPromptEncoder
from peft_continual.tuners.continual_prompt.fingerprint import check_fingerprint, fingerprint, name_or_path
from peft_continual.tuners.continual_prompt.injection import check_prompt_batch, gather_prompt_rows, inject_prompts
from peft_continual.tuners.continual_prompt.sharded import (
    call_with_whole_parameters,
    whole_embedding,
    with_absent_tasks_in_the_graph,
)
from peft_continual.tuners.continual_prompt.stacked import StackedAdapters, check_prompt_adapter
from peft_continual.tuners.continual_prompt.stacked_methods import StackedAdapterMethods
from peft_continual.tuners.continual_prompt.table import PromptTable


class ContinualPromptModel(StackedAdapterMethods, PeftTunerBase):
    """Task-conditioned prompt encoder + frozen prompt table, placed at virtual-token positions of each row.

    Built by PEFT (``get_peft_model``, ``PeftModel.from_pretrained``), not by hand.

    Batch keys, besides the base model's: ``virtual_token_mask`` ``(B, L)`` bool, True where a row's virtual tokens
    stand (placeholder ids there are ignored), and ``tasknames``, a list of ``B`` task names.

    LoRA or IA3 adapters given in ``ContinualPromptConfig(stacked_adapters=...)`` live in the same model (PEFT's own
    layers inside the base model); see ``peft_continual.tuners.continual_prompt.stacked`` for the design, and
    ``stacked_methods.StackedAdapterMethods`` for their switches, training and merging.

    Attributes:
        prompt_table: Frozen rows of finished tasks.
        prompt_encoder: The open round's encoder, or ``None`` once its tasks are frozen.

    With ``prompt_depth = k > 1`` (deep prompts) a prompt's first ``D`` columns go into the input embeddings and the
    rest into the inputs of decoder layers ``1..k-1`` (``deep_prompts.DeepPromptHooks``, set up with the adapter).

    Examples:
        >>> from peft import get_peft_model
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
        ...                                     num_hidden_layers=1, num_attention_heads=2))
        >>> template = TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label")
        >>> config = ContinualPromptConfig(templates=[template], taskname_token_ids={"sentiment": [5]})
        >>> model = get_peft_model(base, config)
        >>> model.freeze_tasks(); model.prompt_table.counts()
        {'sentiment': 4}
    """

    # ------------------------------------------------------------------ building
    def _build_adapter(self, adapter_name: str, config: ContinualPromptConfig) -> None:
        """Check or record the base fingerprint, build the table (from config), the deep prompts' layer hooks, the open
        round's encoder, the stacked LoRA/IA3 adapters."""
        check_prompt_adapter(adapter_name, config, self._stacked, list(self.peft_config))
        if config.base_model_fingerprint is not None:
            check_fingerprint(config.base_model_fingerprint, self.model)
        else:
            config.base_model_fingerprint = fingerprint(self.model)
        weight = self._word_embeddings().weight
        config.token_dim = int(weight.shape[1])
        if config.encoder_hidden_size is None:
            config.encoder_hidden_size = default_encoder_hidden_size(config.token_dim)
        # adapter_config.json sorts dict keys; template order is the order in which tasks were added
        frozen = {name: config.frozen_tasks[name] for name in config.token_counts() if name in config.frozen_tasks}
        table = PromptTable(config.token_dim * config.prompt_depth, frozen).to(weight.device)
        table.add_listener(functools.partial(self._follow_table_change, adapter_name))
        getattr(self, TABLE_ATTR)[adapter_name] = table
        if config.prompt_depth > 1:
            check_prompt_depth(config.prompt_depth, self.model)
            if self._deep_hooks is None:
                self._deep_hooks = DeepPromptHooks(self.model)
        if config.training_tasks:
            self._build_encoder(adapter_name, config)
        if config.stacked_adapters:
            self._stacked = StackedAdapters.build(self.model, adapter_name, config)
            self._stacked.sync(self._adapters_enabled)

    def _build_encoder(self, adapter_name: str, config: ContinualPromptConfig, tokenizer: Any = None) -> None:
        config.resolve_token_ids(name_or_path(self.model), tokenizer)
        all_counts = config.token_counts()
        counts = {name: all_counts[name] for name in config.training_tasks}
        weight = self._word_embeddings().weight
        scales = None
        if config.prompt_depth > 1:
            scales = layer_input_scales(self.model, config.init_token_ids, config.prompt_depth)
        encoder = TaskPromptEncoder.from_config(config, counts, self._word_embeddings(), scales)
        encoder.to(weight.device)
        encoder.requires_grad_(not config.inference_mode)
        getattr(self, ENCODER_ATTR)[adapter_name] = encoder

    def _follow_table_change(self, adapter_name: str, *event: Any) -> None:
        self.peft_config[adapter_name].follow_table_change(*event)  # the config PEFT holds now, not the one built

    # ------------------------------------------------------------------ state
    _deep_hooks: DeepPromptHooks | None = None
    """The decoder layers' hooks of deep prompts, set up by the first adapter with ``prompt_depth > 1``."""

    @property
    def _adapter(self) -> str:
        return self.active_adapters[0]

    @property
    def prompt_table(self) -> PromptTable:
        """The frozen rows of finished tasks: inspect (``tasks``, ``counts()``, ``shapes()``), ``remove``, ``rename``."""
        return getattr(self, TABLE_ATTR)[self._adapter]

    @property
    def prompt_encoder(self) -> TaskPromptEncoder | None:
        """The encoder of the open training round, or ``None`` once its tasks are frozen."""
        encoders = getattr(self, ENCODER_ATTR)
        return encoders[self._adapter] if self._adapter in encoders else None  # noqa: SIM401 (ModuleDict has no get)

    def task_prompts(self, tasknames: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Task name -> ``(n_T, k * D)`` prompt (table rows, or encoder output), for ``tasknames`` or every task.

        Raises:
            UnknownTaskError: a name is neither in the table nor in training.
        """
        encoder = self.prompt_encoder
        training = encoder.tasks if encoder is not None else ()
        if tasknames is None:
            tasknames = [*self.prompt_table.tasks, *training]
        unknown = [name for name in dict.fromkeys(tasknames) if name not in self.prompt_table and name not in training]
        if unknown:
            raise UnknownTaskError(
                f"task(s) {unknown} unknown to this adapter; frozen in the table: {allowed(self.prompt_table.tasks)}; "
                f"in training: {allowed(training)}"
            )
        prompts = {name: self.prompt_table[name] for name in tasknames if name in self.prompt_table}
        in_training = [name for name in dict.fromkeys(tasknames) if name in training]
        if in_training:
            prompts.update(encoder(in_training, self._word_embeddings()))
        return prompts

    # ------------------------------------------------------------------ forward / generate
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        virtual_token_mask: torch.Tensor | None = None,
        tasknames: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the base model with each row's prompt at its virtual positions; ``labels`` -> ``loss``.

        Args:
            input_ids: ``(B, L)`` token ids; placeholder ids at virtual positions.
            attention_mask: ``(B, L)``.
            inputs_embeds: ``(B, L, D)``, instead of ``input_ids``.
            labels: ``(B, L)``, ``-100`` where no loss.
            virtual_token_mask: ``(B, L)`` bool, True at virtual positions; ``None`` runs the plain base model.
            tasknames: ``B`` task names.
            kwargs: Passed to the base model.
        """
        embeds, deep = self._embed_with_prompts(input_ids, inputs_embeds, virtual_token_mask, tasknames)
        if embeds is not None:
            input_ids = None
        with self._placing_deep_prompts(virtual_token_mask, deep):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=embeds, labels=labels, **kwargs
            )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` of the base model with the prompts written in at prefill.

        The base model receives both ``input_ids`` (so logits processors such as ``repetition_penalty`` see real
        ids, and the output starts with them) and ``inputs_embeds`` (used for the prefill only); decoding then
        continues from the KV cache as usual, so greedy, sampling, beams and left padding all work.
        """
        virtual_token_mask = kwargs.pop("virtual_token_mask", None)
        tasknames = kwargs.pop("tasknames", None)
        if virtual_token_mask is None and tasknames is None:
            return self.model.generate(*args, **kwargs)
        input_ids = kwargs.pop("input_ids", None)
        if args and isinstance(args[0], torch.Tensor):
            input_ids, args = args[0], args[1:]
        if input_ids is None:
            raise RecordError(
                "generate with virtual tokens needs input_ids (with placeholder ids at virtual positions)"
            )
        with torch.no_grad():
            embeds, deep = self._embed_with_prompts(
                input_ids, kwargs.pop("inputs_embeds", None), virtual_token_mask, tasknames
            )
        with self._placing_deep_prompts(virtual_token_mask, deep):  # the prefill; decoding steps hold no virtual token
            return self.model.generate(*args, input_ids=input_ids, inputs_embeds=embeds, **kwargs)

    def _embed_with_prompts(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        virtual_token_mask: torch.Tensor | None,
        tasknames: Sequence[str] | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(B, L, D)`` input embeddings with prompts injected (``inputs_embeds`` unchanged without virtual tokens),
        and the deep prompts' slices for layers ``1..k-1``, ``(M, k-1, D)`` for the ``M`` virtual positions (row-major),
        or ``None`` at depth 1."""
        if virtual_token_mask is None and tasknames is None:
            return inputs_embeds, None
        check_prompt_batch(input_ids, inputs_embeds, virtual_token_mask, tasknames)
        if inputs_embeds is None:
            inputs_embeds = self._word_embeddings()(input_ids)
        if not self._prompts_active:
            return inputs_embeds, None
        tasknames = list(tasknames)
        prompts = self.task_prompts(tasknames)
        width = inputs_embeds.shape[-1]
        config = self.peft_config[self._adapter]
        deep = None
        if config.prompt_depth > 1:
            mask = virtual_token_mask.to(device=inputs_embeds.device, dtype=torch.bool)
            deep_rows = {name: rows[:, width:] for name, rows in prompts.items()}
            deep = gather_prompt_rows(mask, tasknames, deep_rows, inputs_embeds.dtype)
            deep = deep.unflatten(-1, (config.prompt_depth - 1, width))
            prompts = {name: rows[:, :width] for name, rows in prompts.items()}
            if config.first_trained_layer:  # held at the init text: no gradient, so none flows below the trained layers
                prompts = {name: rows.detach() for name, rows in prompts.items()}
        embeds = inject_prompts(inputs_embeds, virtual_token_mask, tasknames, prompts)
        return with_absent_tasks_in_the_graph(embeds, self.prompt_encoder, tasknames, self._word_embeddings()), deep

    def _placing_deep_prompts(
        self, virtual_token_mask: torch.Tensor | None, deep: torch.Tensor | None
    ) -> contextlib.AbstractContextManager[None]:
        """Around a call of the base model: the hooks write ``deep`` ``(M, k-1, D)`` at the virtual positions."""
        if self._deep_hooks is None or deep is None:
            return contextlib.nullcontext()
        mask = virtual_token_mask.to(device=deep.device, dtype=torch.bool)
        return self._deep_hooks.placing(mask, deep, self.peft_config[self._adapter].first_trained_layer)

    # ------------------------------------------------------------------ rounds
    def freeze_tasks(self) -> None:
        """End the round: run the encoder once per task in training, store the outputs in the table, drop it.

        Afterwards nothing is trainable and ``save_pretrained`` writes only the table (the inference artefact).

        Raises:
            ConfigError: no round is open (no tasks in training).
        """
        encoder = self.prompt_encoder
        if encoder is None:
            raise ConfigError(f"no tasks in training; the table already holds {allowed(self.prompt_table.tasks)}")
        encoder.eval()
        with torch.no_grad():
            # under FSDP the encoder's and the embedding's parameters are shards outside the model's forward
            rows = call_with_whole_parameters(encoder, list(encoder.tasks), whole_embedding(self._word_embeddings()))
        for name in encoder.tasks:
            self.prompt_table.add(name, rows[name])
        del getattr(self, ENCODER_ATTR)[self._adapter]

    def add_tasks(self, templates: Sequence[TaskTemplate | dict[str, Any]], tokenizer: Any = None) -> None:
        """Start a round for new tasks with a fresh encoder; tasks in the table stay frozen.

        Args:
            templates: Templates of the new tasks.
            tokenizer: The base model's tokenizer, to encode the new task names (else it is loaded from
                ``tokenizer_name_or_path`` or the base model's path; ids already in the config are kept).

        Raises:
            ConfigError: a round is still open (call ``freeze_tasks()`` first).
            DuplicateTaskError: a new task's name is already known.
        """
        if self.prompt_encoder is not None:
            raise ConfigError(
                f"task(s) {list(self.prompt_encoder.tasks)} are still in training; call freeze_tasks() before add_tasks()"
            )
        config = self.peft_config[self._adapter]
        new = [ContinualPromptConfig._template_dict(t, i) for i, t in enumerate(templates)]
        if not new:
            raise ConfigError("add_tasks needs at least one template")
        check_unique_tasknames(config.task_templates() + [TaskTemplate.from_dict(t) for t in new])
        saved = (list(config.templates), list(config.training_tasks), config.inference_mode)
        config.templates += new
        config.training_tasks = [t["taskname"] for t in new]
        config.inference_mode = False
        try:
            self._build_encoder(self._adapter, config, tokenizer)
        except Exception:
            config.templates, config.training_tasks, config.inference_mode = saved
            raise

    def prompt_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the open rounds' encoders (every prompt adapter), trainable or not."""
        for name in self.peft_config:
            yield from self._adapter_parameters(name)

    @property
    def _prompts_active(self) -> bool:
        return self._adapters_enabled and self._prompts_enabled
