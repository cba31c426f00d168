"""Several processes, one run: under ``accelerate launch`` or ``torchrun`` every process trains (DDP averages the
gradients), evaluation splits the records between the processes, and only the main process writes files.

Alone (a plain ``python recipe.py``) every function here is a plain call: no process group is started for it.
The process group is the one ``accelerate``'s ``PartialState`` starts (``TrainingArguments`` does it, and
``peft_continual.experiments.cli.run_recipe`` does it first thing), so these helpers and ``Trainer`` agree on
ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch

Item = TypeVar("Item")
Answer = TypeVar("Answer")
Function = TypeVar("Function", bound=Callable[..., Any])


def distributed() -> bool:
    """Whether this process is one of several (a process group is running)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """The process that writes files and prints results: global rank 0, or the only process."""
    return not distributed() or torch.distributed.get_rank() == 0


def wait_for_everyone() -> None:
    """A barrier: what the main process wrote before it, every process can read after it."""
    if distributed():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def end_processes() -> None:
    """The last call of a run under ``accelerate launch``/``torchrun``: every process waits for the others, then the
    process group is destroyed (accelerate's ``destroy_process_group``). Left to the interpreter's exit, a gloo
    group's threads can be torn down while still joinable and abort a process that had finished its work
    ("terminate called without an active exception", exit status -6), failing a run that did everything. Alone: a
    no-op."""
    if distributed():
        from accelerate import PartialState

        wait_for_everyone()
        PartialState().destroy_process_group()


def across_processes(run: Callable[[list[Item]], list[Answer]], items: Sequence[Item]) -> list[Answer]:
    """``run(items)``, with the work split between the processes: each process runs its contiguous share (the first
    ``len(items) % N`` processes one item more) and every process gets all the answers back, in the items' order.

    ``run`` must return one answer per item it is given. Used by evaluation (``evaluate_tasks``): N processes
    generate N times faster, and each one computes the same metrics from the gathered answers.

    Examples:
        >>> across_processes(lambda share: [len(text) for text in share], ["a", "bb", "ccc"])  # alone: one share
        [1, 2, 3]
    """
    if not distributed():
        return run(list(items))
    from accelerate import PartialState
    from accelerate.utils import gather_object

    with PartialState().split_between_processes(list(items)) as share:
        answers = run(list(share)) if share else []
    if len(answers) != len(share):
        raise ValueError(f"{run!r} returned {len(answers)} answers for {len(share)} items")
    return gather_object(answers)


def main_process_only(function: Function) -> Function:
    """Decorate a function that writes files or prints results: the main process runs it, the others skip it
    (their result is ``None``). It does not wait: where the other processes read what it wrote, call
    ``wait_for_everyone()`` between (a barrier inside would hang a call made on the main process alone)."""

    @functools.wraps(function)
    def on_main_process(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs) if is_main_process() else None

    return on_main_process  # type: ignore[return-value]
