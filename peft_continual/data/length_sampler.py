"""Training order with little padding that keeps every batch a mix of tasks.

A random batch of round 1 in the demo is 30% padding (sentiment rows are longer than intent rows); in round 2, 40%.
``transformers``' ``group_by_length`` removes it by sorting big random chunks by length, but when tasks differ in
length its batches then hold mostly one task, and the shared encoder learned worse from them (demo: round 1's
eval_loss 1.00 instead of 0.48). Here each chunk is sorted by a row's length *rank within its own task*: a batch
takes rows of the same length quantile from every task, in the chunk's task proportions, so the task mix is kept (it
varies less from batch to batch than at random) while each task's rows in a batch have similar lengths.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from peft_continual.errors import ConfigError


class TaskMixedLengthSampler(Sampler[int]):
    """Indices for batches of ``batch_size`` rows: shuffled, then grouped by length quantile within each task.

    Each epoch draws a permutation (seeded by ``seed`` and the epoch, so a resumed run gets the same order), cuts it
    into chunks of ``batch_size * chunk_batches`` rows, orders every chunk by (length rank within the row's task in
    the chunk, random tie-break), cuts it into batches and shuffles the batches; the longest batch comes first, so
    a run that would run out of memory does so at its first step (as ``transformers.LengthGroupedSampler``).

    Args:
        lengths: tokens per row (``len(input_ids)``).
        tasknames: task of each row.
        batch_size: rows of one step (``ContinualTrainer`` gives ``train_batch_size`` x processes: each process
            pads its own slice of a step's rows, all of similar length).
        chunk_batches: batches per sorted chunk; more removes more padding and makes the order less random.
        seed: base seed of the permutation.

    Examples:
        >>> tasks = ["short"] * 4 + ["long"] * 4
        >>> sampler = TaskMixedLengthSampler([5, 9, 6, 8, 30, 31, 33, 29], tasks, batch_size=4)
        >>> order = list(sampler)
        >>> sorted(order) == list(range(8)), [sorted(tasks[i] for i in order[k : k + 4]) for k in (0, 4)]
        (True, [['long', 'long', 'short', 'short'], ['long', 'long', 'short', 'short']])
    """

    def __init__(
        self,
        lengths: Sequence[int],
        tasknames: Sequence[str],
        batch_size: int,
        chunk_batches: int = 50,
        seed: int = 0,
    ) -> None:
        if len(lengths) != len(tasknames):
            raise ConfigError(f"{len(lengths)} lengths but {len(tasknames)} task names: one of each per row")
        if batch_size < 1 or chunk_batches < 1:
            raise ConfigError(f"batch_size ({batch_size}) and chunk_batches ({chunk_batches}) must be >= 1")
        self.lengths = list(lengths)
        self.tasknames = list(tasknames)
        self.batch_size = batch_size
        self.chunk_batches = chunk_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new order per epoch, the same one when the epoch is rerun (``ContinualTrainer`` calls it at each epoch's
        start, also under ``accelerate``'s batch sharding, which does not pass ``set_epoch`` on)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def order(self) -> list[int]:
        """This epoch's indices, batch after batch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        permutation = torch.randperm(len(self.lengths), generator=generator).tolist()
        size = self.batch_size * self.chunk_batches
        batches: list[list[int]] = []
        for start in range(0, len(permutation), size):
            chunk = self._by_quantile(permutation[start : start + size], generator)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # A short last batch stays last (so the DataLoader's batches line up with these); the rest are shuffled,
        # then the longest full batch goes first.
        full = [b for b in batches if len(b) == self.batch_size]
        rest = [b for b in batches if len(b) != self.batch_size]
        full = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda i: max(self.lengths[j] for j in full[i]))
            full[0], full[longest] = full[longest], full[0]
        return [index for batch in full + rest for index in batch]

    def _by_quantile(self, chunk: list[int], generator: torch.Generator) -> list[int]:
        """The chunk ordered by each row's length quantile within its task (ties broken at random)."""
        by_task: dict[str, list[int]] = {}
        for index in chunk:
            by_task.setdefault(self.tasknames[index], []).append(index)
        tie_break = torch.rand(len(chunk), generator=generator).tolist()
        position = {index: i for i, index in enumerate(chunk)}
        quantile: dict[int, float] = {}
        for members in by_task.values():
            members.sort(key=lambda index: (self.lengths[index], tie_break[position[index]]))
            for rank, index in enumerate(members):
                quantile[index] = (rank + 0.5) / len(members)
        return sorted(chunk, key=lambda index: (quantile[index], tie_break[position[index]]))
