"""``PromptTable``: the frozen virtual tokens of finished tasks, one ``(n_T, D)`` matrix per task.

The table is what makes continual p-tuning forget nothing: rows of a finished task are buffers, not parameters, so
they never reach an optimizer, never receive a gradient and keep their exact bytes through later rounds
(``row_hashes`` proves it). They travel in the adapter's safetensors file under the key
``base_model.continual_prompt_table.task:<name>``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from peft_continual.errors import ConfigError, DuplicateTaskError, UnknownTaskError, allowed

TableListener = Callable[[str, str, "str | None"], None]
"""Called before each change as ``listener(event, task, new_name)``, event in ``add``, ``remove``, ``rename``."""

_KEY_PREFIX = "task:"


def task_key(taskname: str) -> str:
    """Buffer/parameter name of a task: ``task:`` + the name with ``%`` and ``.`` escaped (torch forbids ``.``).

    The prefix keeps a task called ``training`` or ``forward`` clear of ``nn.Module`` attributes.
    """
    return _KEY_PREFIX + taskname.replace("%", "%25").replace(".", "%2E")


class PromptTable(nn.Module):
    """Per-task frozen prompt rows: ``taskname -> (n_T, D)`` float32 buffers.

    Args:
        token_dim: ``D``, the base model's hidden size.
        counts: Tasks to allocate, with their token counts (``PeftModel.from_pretrained`` builds the table from the
            config, then loads the file into it). Until a state dict fills them, their rows are NaN and reading them
            with ``table[name]`` raises, so a table whose file lacked a task fails loudly instead of serving zeros.

    Examples:
        >>> table = PromptTable(token_dim=4)
        >>> table.add("sentiment", torch.zeros(3, 4))
        >>> len(table), "sentiment" in table, table.counts(), table.shapes()
        (1, True, {'sentiment': 3}, {'sentiment': (3, 4)})
        >>> table.rename("sentiment", "sst2"); table.tasks
        ('sst2',)
    """

    def __init__(self, token_dim: int, counts: Mapping[str, int] | None = None) -> None:
        super().__init__()
        self.token_dim = token_dim
        self._tasks: list[str] = []
        self._listeners: list[TableListener] = []
        for name, count in (counts or {}).items():
            self._register(name, torch.full((count, token_dim), float("nan")))
        self._unloaded = set(self._tasks)

    # ------------------------------------------------------------------ inspect
    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names in the order they were added."""
        return tuple(self._tasks)

    def counts(self) -> dict[str, int]:
        """Task name -> number of virtual tokens."""
        return {name: self._rows(name).shape[0] for name in self._tasks}

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Task name -> ``(n_T, D)``."""
        return {name: tuple(self._rows(name).shape) for name in self._tasks}

    def row_hashes(self) -> dict[str, str]:
        """Task name -> sha256 of the rows' bytes (float32, row-major): equal hashes mean bit-identical rows."""
        return {name: _sha256(self._rows(name)) for name in self._tasks}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, taskname: object) -> bool:
        return taskname in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self.tasks)

    def __getitem__(self, taskname: str) -> torch.Tensor:
        """The rows of ``taskname``, shape ``(n_T, D)``.

        Raises:
            UnknownTaskError: no such task.
            ConfigError: the rows were allocated from the config but never loaded.
        """
        rows = self._rows(taskname)
        if taskname in self._unloaded:
            raise ConfigError(
                f"the rows of task {taskname!r} were never loaded: the adapter file has no "
                f"{task_key(taskname)!r} entry (see the 'missing adapter keys' warning of from_pretrained)"
            )
        return rows

    def _rows(self, taskname: str) -> torch.Tensor:
        if taskname not in self._tasks:
            raise UnknownTaskError(f"task {taskname!r} is not in the prompt table; tasks: {allowed(self._tasks)}")
        return self._buffers[task_key(taskname)]

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Load as ``nn.Module`` does, and mark the tasks whose rows the state dict holds as loaded."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._unloaded -= {name for name in self._unloaded if prefix + task_key(name) in state_dict}

    def extra_repr(self) -> str:
        return ", ".join(f"{name}: {tuple(shape)}" for name, shape in self.shapes().items()) or "empty"

    # ------------------------------------------------------------------ change
    def add(self, taskname: str, rows: torch.Tensor) -> None:
        """Store a float32 copy of ``rows`` ``(n_T, D)`` as the frozen rows of a new task."""
        _check_name(taskname)
        if taskname in self._tasks:
            raise DuplicateTaskError(f"task {taskname!r} is already in the prompt table")
        if rows.ndim != 2 or rows.shape[1] != self.token_dim:
            raise ConfigError(
                f"rows of task {taskname!r} must have shape (n, {self.token_dim}), got {tuple(rows.shape)}"
            )
        self._notify("add", taskname, None)
        self._register(taskname, rows.detach().to(torch.float32).clone())

    def remove(self, taskname: str) -> None:
        """Delete a task's rows."""
        self._rows(taskname)  # raises UnknownTaskError for an unknown task
        self._notify("remove", taskname, None)
        del self._buffers[task_key(taskname)]
        self._tasks.remove(taskname)
        self._unloaded.discard(taskname)

    def rename(self, taskname: str, new_name: str) -> None:
        """Give a task's rows a new name; the rows keep their bytes."""
        rows = self._rows(taskname)
        _check_name(new_name)
        if new_name in self._tasks:
            raise DuplicateTaskError(f"cannot rename {taskname!r} to {new_name!r}: the table already has that task")
        self._notify("rename", taskname, new_name)
        del self._buffers[task_key(taskname)]
        self.register_buffer(task_key(new_name), rows, persistent=True)
        self._tasks[self._tasks.index(taskname)] = new_name
        if taskname in self._unloaded:
            self._unloaded = (self._unloaded - {taskname}) | {new_name}

    def add_listener(self, listener: TableListener) -> None:
        """Call ``listener(event, task, new_name)`` before each change; it may raise to refuse the change.

        The model uses this to keep its config (``frozen_tasks``, ``templates``) in step with the table.
        """
        self._listeners.append(listener)

    def _register(self, taskname: str, rows: torch.Tensor) -> None:
        self.register_buffer(task_key(taskname), rows, persistent=True)
        self._tasks.append(taskname)

    def _notify(self, event: str, taskname: str, new_name: str | None) -> None:
        for listener in self._listeners:
            listener(event, taskname, new_name)


def _check_name(taskname: object) -> None:
    if not isinstance(taskname, str) or not taskname.strip():
        raise ConfigError(f"task names must be non-empty strings, got {taskname!r}")


def _sha256(tensor: torch.Tensor) -> str:
    data = tensor.detach().to("cpu").contiguous().view(torch.uint8)
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()
