"""``TaskPromptEncoder``: one trainable encoder that produces the virtual tokens of several tasks.

NeMo's p-tuning encoder, conditioned on the task *name*: the input of task ``T`` (``n_T`` virtual tokens) is the
first ``n_T`` rows of a learned input embedding, whose first ``min(len(name_ids), n_T)`` rows are replaced by the
frozen base model's word embeddings of the task name. An LSTM (+ MLP head) or an MLP maps that input to the task's
``(n_T, D)`` prompt. Sharing one encoder lets tasks trained together share what they learn while the name keeps
their prompts apart; tasks may have different token counts. The ``embedding`` type is plain prompt tuning instead:
one trainable ``(n_T, D)`` matrix per task.

Where the prompts start (``start_rows``, the config's ``prompt_init="text"``): NeMo's encoder starts far from
language. Its learned inputs are ``nn.Embedding``'s N(0, 1) rows (norm ~24 at width 576, against ~3.2 for
SmolLM2's word embeddings), and its first outputs are nearly one vector for every position (mean cosine 0.90, norm
~0.7). With ``start_rows`` each task's prompt is a trainable matrix that starts as the embeddings of a text (where
prompt tuning starts) plus the encoder's output as a learned correction: the encoder's last layer starts at zero, so
at step 0 the prompt *is* the text's embeddings, and its learned inputs start at the word embeddings' scale.

The encoder runs once per task present in a batch (tasks with the same count in one call), never once per row, and
always in float32, also inside ``torch.autocast`` (bf16/fp16 training): it is a few MB, its output is cast to the
base model's dtype where the rows are placed, and ``torch.nn.LSTM`` has no bf16 kernel on CPUs without bf16
hardware (oneDNN: "could not create a primitive descriptor for the LSTM forward propagation primitive").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from peft_continual.errors import ConfigError
from peft_continual.tuners.continual_prompt.config import EncoderType, PromptInit
from peft_continual.tuners.continual_prompt.table import task_key


class TaskPromptEncoder(nn.Module):
    """Trainable prompts of the tasks in the open training round.

    Args:
        token_dim: ``D``, the base model's hidden size.
        counts: Task name -> ``n_T`` for every task this encoder trains.
        taskname_token_ids: Task name -> token ids of the name (``lstm``/``mlp``; ignored by ``embedding``).
        encoder_type: ``lstm``, ``mlp`` or ``embedding``.
        hidden_size: Hidden size ``H`` of the LSTM/MLP.
        num_layers: LSTM layers (bidirectional), or linear layers of the MLP.
        dropout: Between LSTM layers; after each hidden ReLU of the MLP.
        init_rows: ``embedding`` only: task name -> initial ``(n_T, D)`` rows (default: standard normal).
        start_rows: ``lstm``/``mlp``: task name -> ``(n_T, D)`` rows the prompt starts from (trained with the
            encoder, which learns a correction on top, zero at the start); ``None``: NeMo's encoder, the prompt is the
            encoder's output alone.
        input_std: Standard deviation of the learned input rows (``lstm``/``mlp``); ``None``: ``nn.Embedding``'s 1.
        layer_scales: Deep prompts (the config's ``prompt_depth`` ``k > 1``): ``(k,)`` scale of each layer's input
            relative to the embeddings (``deep_prompts.layer_input_scales``). Each prompt is then ``(n_T, k * D)``,
            one ``D``-wide slice per layer; slices ``1..k-1`` start at zero (init and start rows fill slice 0) and
            are learned in units of their layer's scale. ``None``: ``k = 1``.
        first_trained_layer: Deep prompts: slices ``0..s-1`` are held where they start (``init_rows`` or
            ``start_rows`` in slice 0, zero above; a buffer, never trained), so no gradient flows below layer ``s``.
            The parameters' columns for those slices stay (their gradient is zero), so parameter counts include them.

    Input: task names and the base model's input embedding module. Output: task name -> ``(n_T, k * D)`` float32.

    Examples:
        >>> encoder = TaskPromptEncoder(8, {"a": 3, "b": 5}, {"a": [4], "b": [5, 6]}, "lstm", hidden_size=6)
        >>> out = encoder(["a", "b"], nn.Embedding(10, 8))
        >>> out["a"].shape, out["b"].shape
        (torch.Size([3, 8]), torch.Size([5, 8]))
    """

    def __init__(
        self,
        token_dim: int,
        counts: Mapping[str, int],
        taskname_token_ids: Mapping[str, Sequence[int]],
        encoder_type: EncoderType | str = EncoderType.LSTM,
        hidden_size: int | None = None,
        num_layers: int = 2,
        dropout: float = 0.0,
        init_rows: Mapping[str, torch.Tensor] | None = None,
        start_rows: Mapping[str, torch.Tensor] | None = None,
        input_std: float | None = None,
        layer_scales: torch.Tensor | None = None,
        first_trained_layer: int = 0,
    ) -> None:
        super().__init__()
        depth = 1 if layer_scales is None else len(layer_scales)
        width = token_dim * depth
        if layer_scales is not None:  # (k * D,): each slice's scale, repeated over its D columns
            self.register_buffer("column_scales", torch.as_tensor(layer_scales).float().repeat_interleave(token_dim))
        self.encoder_type = EncoderType(encoder_type)
        self.counts = dict(counts)
        self.taskname_token_ids = {name: list(taskname_token_ids.get(name, [])) for name in self.counts}
        if self.encoder_type == EncoderType.EMBEDDING:
            init_rows = init_rows or {}
            self.prompts = nn.ParameterDict(
                {
                    task_key(name): nn.Parameter(
                        _widen(init_rows[name] if name in init_rows else torch.randn(count, token_dim), width)
                    )
                    for name, count in self.counts.items()
                }
            )
            self._hold_lower_slices(init_rows, first_trained_layer * token_dim)
            return
        hidden_size = hidden_size or token_dim
        self.input_embeddings = nn.Embedding(max(self.counts.values()), token_dim)
        if self.encoder_type == EncoderType.LSTM:
            self.lstm = nn.LSTM(
                token_dim,
                hidden_size,
                num_layers,
                dropout=dropout if num_layers > 1 else 0.0,
                bidirectional=True,
                batch_first=True,
            )
            self.head = nn.Sequential(
                nn.Linear(2 * hidden_size, 2 * hidden_size), nn.ReLU(), nn.Linear(2 * hidden_size, width)
            )
        else:
            self.head = _mlp(token_dim, hidden_size, num_layers, dropout, width)
        if input_std is not None:
            nn.init.normal_(self.input_embeddings.weight, std=input_std)
        self.start_rows = None
        if start_rows is not None:
            self.start_rows = nn.ParameterDict(
                {task_key(name): nn.Parameter(_widen(start_rows[name], width)) for name in self.counts}
            )
            nn.init.zeros_(self.head[-1].weight)  # the correction is zero at the start (the head ends in a Linear)
            nn.init.zeros_(self.head[-1].bias)
        self._hold_lower_slices(start_rows, first_trained_layer * token_dim)

    def _hold_lower_slices(self, start_rows: Mapping[str, torch.Tensor] | None, columns: int) -> None:
        """Keep each task's first ``columns`` output columns at its start rows (widened and scaled). A buffer saved with
        the encoder: a resumed run reads the very values it started from, whatever dtype its base is loaded in."""
        self.held_columns = columns
        if not columns:
            return
        missing = [name for name in self.counts if name not in (start_rows or {})]
        if missing or not hasattr(self, "column_scales"):
            raise ConfigError(
                f"first_trained_layer > 0 needs deep prompts (layer_scales) and start rows of every task; "
                f"tasks without start rows: {missing}"
            )
        self.held = nn.Module()
        for name in self.counts:
            rows = start_rows[name].to(self.column_scales.device)  # the scales are measured on the CPU
            held = self._scaled(_widen(rows, self.column_scales.numel()))[:, :columns]
            self.held.register_buffer(task_key(name), held)

    @classmethod
    def from_config(
        cls,
        config: Any,
        counts: Mapping[str, int],
        word_embeddings: nn.Module,
        layer_scales: torch.Tensor | None = None,
    ) -> TaskPromptEncoder:
        """The encoder a ``ContinualPromptConfig`` asks for, for the tasks of ``counts``, on the base model's
        ``word_embeddings`` (its init texts' rows and its scale); token ids must be resolved already. Deep prompts
        (``prompt_depth > 1``) need the base model's ``layer_scales`` ``(k,)``."""
        embedding = config.encoder_type == EncoderType.EMBEDDING
        text_init = config.prompt_init == PromptInit.TEXT
        start = text_start_rows(word_embeddings, config.init_token_ids, counts) if text_init or embedding else None
        return cls(
            config.token_dim,
            counts,
            config.taskname_token_ids,
            config.encoder_type,
            hidden_size=config.encoder_hidden_size,
            num_layers=config.encoder_num_layers,
            dropout=config.encoder_dropout,
            init_rows=start if embedding else None,
            start_rows=start if text_init and not embedding else None,
            input_std=float(word_embeddings.weight.detach().float().std()) if text_init and not embedding else None,
            layer_scales=layer_scales if config.prompt_depth > 1 else None,
            first_trained_layer=config.first_trained_layer,
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this encoder trains."""
        return tuple(self.counts)

    def forward(self, tasknames: Sequence[str], word_embeddings: nn.Module) -> dict[str, torch.Tensor]:
        """Compute the prompts of ``tasknames`` (each once, whatever the batch size).

        Args:
            tasknames: Distinct tasks of this encoder.
            word_embeddings: The frozen base input embedding, ``(V, D)``; embeds the task names.

        Returns:
            Task name -> prompt of shape ``(n_T, k * D)``.
        """
        if self.encoder_type == EncoderType.EMBEDDING:
            return {name: self._held_below(name, self._scaled(self.prompts[task_key(name)])) for name in tasknames}
        groups: dict[int, list[str]] = {}
        for name in tasknames:
            groups.setdefault(self.counts[name], []).append(name)
        prompts: dict[str, torch.Tensor] = {}
        for count, names in groups.items():
            inputs = torch.stack([self._task_input(name, count, word_embeddings) for name in names])  # (G, n, D)
            outputs = self._encode(inputs)  # (G, n, k * D)
            prompts.update(zip(names, outputs.unbind(0), strict=True))
        if self.start_rows is not None:
            prompts = {name: self.start_rows[task_key(name)] + rows for name, rows in prompts.items()}
        return {name: self._held_below(name, self._scaled(rows)) for name, rows in prompts.items()}

    def _held_below(self, taskname: str, rows: torch.Tensor) -> torch.Tensor:
        """``(n, k * D)`` rows with the held slices (``first_trained_layer``) in place of the computed ones."""
        if not self.held_columns:
            return rows
        held = getattr(self.held, task_key(taskname))
        return torch.cat([held, rows[:, self.held_columns :]], dim=1)

    def _scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """Deep prompts: ``(n, k * D)`` rows with slice ``j`` in its layer's units (see ``layer_scales``)."""
        return rows * self.column_scales if hasattr(self, "column_scales") else rows

    def _task_input(self, taskname: str, count: int, word_embeddings: nn.Module) -> torch.Tensor:
        """Input rows of one task, ``(n_T, D)``: task-name word embeddings, then learned rows."""
        learned = self.input_embeddings.weight[:count]
        ids = self.taskname_token_ids[taskname][:count]
        if not ids:
            return learned
        ids_tensor = torch.tensor(ids, dtype=torch.long, device=word_embeddings.weight.device)
        with torch.no_grad():
            name_rows = word_embeddings(ids_tensor).to(device=learned.device, dtype=learned.dtype)
        return torch.cat([name_rows, learned[len(ids) :]])

    def _encode(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(G, n, D)`` inputs -> ``(G, n, k * D)`` prompts, in float32 whatever autocast is active."""
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            inputs = inputs.float()
            if self.encoder_type == EncoderType.LSTM:
                inputs = self.lstm(inputs)[0]  # (G, n, 2H)
            return self.head(inputs)


def _mlp(token_dim: int, hidden_size: int, num_layers: int, dropout: float, width: int) -> nn.Sequential:
    """``num_layers`` linear layers ``D -> H -> ... -> H -> width`` with ReLU (and dropout) between them."""
    if num_layers == 1:
        return nn.Sequential(nn.Linear(token_dim, width))
    sizes = [token_dim] + [hidden_size] * (num_layers - 1) + [width]
    layers: list[nn.Module] = []
    for i, (size_in, size_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(size_in, size_out))
        if i < num_layers - 1:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


def _widen(rows: torch.Tensor, width: int) -> torch.Tensor:
    """A float32 copy of ``(n, D)`` rows with zero columns appended up to ``width`` (deep prompts' slices 1..k-1)."""
    rows = rows.detach().float()
    return torch.cat([rows, rows.new_zeros(rows.shape[0], width - rows.shape[1])], dim=1)


def text_start_rows(
    word_embeddings: nn.Module, init_token_ids: Mapping[str, Sequence[int]], counts: Mapping[str, int]
) -> dict[str, torch.Tensor]:
    """Task name -> ``(n_T, D)`` float32 embeddings of its init text's tokens, repeated to ``n_T`` (PEFT's TEXT init
    of prompt tuning); a task without init ids (``prompt_init="random"``, prompt tuning only) gets random vocabulary
    tokens'."""
    weight = word_embeddings.weight
    rows = {}
    for name, count in counts.items():
        ids = init_token_ids.get(name)
        if ids:
            ids_tensor = torch.tensor((list(ids) * math.ceil(count / len(ids)))[:count], device=weight.device)
        else:
            ids_tensor = torch.randint(weight.shape[0], (count,), device=weight.device)
        with torch.no_grad():
            rows[name] = word_embeddings(ids_tensor).float()
    return rows
