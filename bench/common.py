"""Helpers shared by ``bench/train_step.py`` and ``bench/generate.py``: tasks, batches, timing, memory, tables.

Both benchmarks compare methods on one SmolLM2 instance in one process. Repetitions run round-robin across the
methods, so load from other processes on the machine falls on all methods alike; ratios are taken within a round.
Peak memory is measured per method in a fresh (spawned) child process, so methods never share a high-water mark.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord, read_jsonl
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.experiments.task_files import default_data_dir, load_split, load_task_specs
from peft_continual.machine import machine_facts

# Expected here, and repeated on every call: PEFT's P_TUNING ignores position_ids in generate (its prompts are
# prepended), and warns when another adapter model already wraps the shared base model.
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")
warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute in the model")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = Path(default_data_dir(ROOT))
NUM_VIRTUAL_TOKENS = 20

# ----------------------------------------------------------------------------- tasks (real data, 20 virtual tokens)
# task name -> (dataset folder under --data-dir, text field, template); placements differ on purpose
TASKS: dict[str, tuple[str, str, TaskTemplate]] = {
    "sentiment": (
        "financial_phrasebank",
        "sentence",
        TaskTemplate(
            "sentiment",
            "<|VIRTUAL_PROMPT_0|> {sentence}\nSentiment: {label}",
            20,
            [20],
            "label",
            truncate_field="sentence",
        ),
    ),
    "sst2": (
        "sst2_lmbff",
        "sentence",
        TaskTemplate(
            "sst2",
            "<|VIRTUAL_PROMPT_0|> Review: {sentence}<|VIRTUAL_PROMPT_1|>\nSentiment: {label}",
            20,
            [10, 10],
            "label",
            truncate_field="sentence",
        ),
    ),
    "trec": (
        "trec_lmbff",
        "sentence",
        TaskTemplate(
            "trec",
            "Question: {sentence}<|VIRTUAL_PROMPT_0|>\nAnswer type: {label}",
            20,
            [20],
            "label",
            truncate_field="sentence",
        ),
    ),
    "intent_and_slot": (
        "assistant_nlu",
        "utterance",
        TaskTemplate(
            "intent_and_slot",
            "<|VIRTUAL_PROMPT_0|> {utterance}\n<|VIRTUAL_PROMPT_1|>{label}",
            20,
            [16, 4],
            "label",
            truncate_field="utterance",
        ),
    ),
}


def templates(tasknames: Sequence[str]) -> list[TaskTemplate]:
    return [TASKS[name][2] for name in tasknames]


def task_records(data_dir: Path, taskname: str, count: int, join: int = 1) -> list[TaskRecord]:
    """``count`` records of a task's test split; with ``join > 1`` each text field joins ``join`` consecutive ones."""
    folder, text_field, _ = TASKS[taskname]
    records = read_jsonl(data_dir / folder / "test.jsonl")
    rows = []
    for i in range(count):
        group = [records[(i * join + j) % len(records)] for j in range(join)]
        text = " ".join(record.fields[text_field] for record in group)
        rows.append(TaskRecord(taskname, {**group[0].fields, text_field: text}, group[0].source))
    return rows


# ----------------------------------------------------------------------------- batches
def training_batch(tokenizer: Any, data_dir: Path, tasknames: Sequence[str], batch_size: int, length: int) -> dict:
    """Right-padded batch of exactly ``length`` tokens; rows alternate between ``tasknames``.

    Each row joins 8 consecutive test sentences, truncated on the text field to fit ``length`` (BOS-free SmolLM2:
    virtual tokens + text + answer + EOS), then padded up to ``length`` (at most a token or two of padding).
    """
    per_task = {name: task_records(data_dir, name, batch_size, join=8) for name in tasknames}
    rows = [per_task[tasknames[i % len(tasknames)]][i // len(tasknames)] for i in range(batch_size)]
    prompt_tokenizer = PromptTokenizer(tokenizer, templates(tasknames), max_length=length)
    examples = [prompt_tokenizer(record) for record in rows]
    batch = ContinualPromptCollator(tokenizer.pad_token_id, pad_to_multiple_of=length)(examples)
    if batch["input_ids"].shape != (batch_size, length):
        raise ValueError(f"expected a ({batch_size}, {length}) batch, got {tuple(batch['input_ids'].shape)}")
    return batch


def round_one_batches(
    tokenizer: Any, task_file: Path, data_dir: Path, batch_size: int, count: int, seed: int
) -> tuple[list, list[dict]]:
    """The round-1 task specs of a continual task file, and ``count`` batches of ``batch_size`` records drawn at random
    from their training records (seeded): what ``ContinualTrainer`` trains the demo's round 1 on."""
    specs = [spec for spec in load_task_specs(task_file) if spec.round == 1]
    records = [r for s in specs for r in load_split(s, Path(data_dir), "train", s.train_records, seed)]
    prompts = PromptTokenizer(tokenizer, [s.template for s in specs], max_length=256)
    collate = ContinualPromptCollator(pad_token_id=tokenizer.pad_token_id)
    sampler = random.Random(seed)
    return specs, [
        collate(prompts.tokenize_records(sampler.sample(records, batch_size)).examples) for _ in range(count)
    ]


def generation_batch(tokenizer: Any, data_dir: Path, tasknames: Sequence[str], rows_per_task: int) -> dict:
    """Left-padded prompts (no answer); row i belongs to ``tasknames[i % len(tasknames)]``."""
    per_task = {name: task_records(data_dir, name, rows_per_task) for name in tasknames}
    rows = [per_task[tasknames[i % len(tasknames)]][i // len(tasknames)] for i in range(rows_per_task * len(tasknames))]
    prompt_tokenizer = PromptTokenizer(tokenizer, templates(tasknames))
    examples = [prompt_tokenizer(record, include_answer=False) for record in rows]
    batch = ContinualPromptCollator(tokenizer.pad_token_id, padding_side="left")(examples)
    batch.pop("labels")
    return batch


def without_virtual_tokens(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The batch with its virtual positions removed, ``(B, L - n)``: the input of PEFT's P_TUNING, which prepends."""
    mask = batch["virtual_token_mask"]
    keep = ~mask
    rows = mask.shape[0]
    keys = [key for key in ("input_ids", "attention_mask", "labels") if key in batch]
    return {key: batch[key][keep].view(rows, -1) for key in keys}


def select_rows(batch: Mapping[str, Any], rows: Sequence[int]) -> dict[str, Any]:
    """Rows of a batch (tensors and the ``tasknames`` list)."""
    index = torch.tensor(rows)
    return {key: [value[i] for i in rows] if isinstance(value, list) else value[index] for key, value in batch.items()}


# ----------------------------------------------------------------------------- timing
def interleaved_times(runs: Mapping[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, Any]:
    """Time each run over ``repeats`` rounds; each round calls every run once. The first ``warmup`` rounds are dropped.

    Each round starts one run later than the previous one, so no run always follows the same neighbour.

    Returns:
        ``wall`` and ``cpu``: run name -> seconds per round (wall clock; CPU time of this process, which does not count
        the time other processes hold the core, so it is the steadier measure on a shared machine with 1 thread);
        ``outputs``: run name -> its last return value.
    """
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, Any] = {}
    names = list(runs)
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        this_round = {}
        for name in names[shift:] + names[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            outputs[name] = runs[name]()
            this_round[name] = (time.perf_counter() - start_wall, time.process_time() - start_cpu)
        if round_ >= warmup:
            for name, (wall_s, cpu_s) in this_round.items():
                wall[name].append(wall_s)
                cpu[name].append(cpu_s)
        kind = "warm-up" if round_ < warmup else "round"
        times = ", ".join(f"{name} {w:.2f}s (cpu {c:.2f}s)" for name, (w, c) in this_round.items())
        print(f"  {kind} {round_ + 1}/{warmup + repeats}: {times}")
    return {"wall": wall, "cpu": cpu, "outputs": outputs}


def median_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """Median over rounds of ``times[r] / reference[r]`` (paired within a round, so load drift cancels)."""
    return statistics.median(t / ref for t, ref in zip(times, reference, strict=True))


# ----------------------------------------------------------------------------- memory (call inside a child process)
def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Return freed heap to the OS and reset the RSS high-water mark (Linux ``clear_refs``), forgetting setup's peak."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def in_child(function: Callable[..., dict], *args: Any) -> dict:
    """``function(*args)`` in a fresh spawned Python process (nothing inherited from this one's memory)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# ----------------------------------------------------------------------------- arguments
def add_run_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The arguments every benchmark has: rounds, warm-up, threads, seed, data folder, JSON output."""
    parser.add_argument("--repeats", type=int, default=repeats, help="timed rounds (each runs every method once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the 2 cores are shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


# ----------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    """When and where: the date, then ``machine_facts()`` (CPU model, threads, bf16 support, versions)."""
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **machine_facts()}


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, data: Mapping[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}")


def report(
    benchmark: str,
    args: Any,
    load_start: str,
    setting: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    **payload: Any,
) -> None:
    """Print the run's conditions (machine, threads, load) and the result table; write them with ``payload`` to
    ``args.out`` as JSON, so a committed result says under which conditions it was measured."""
    load_end = load_average()
    info = {**machine(), "load_average_start": load_start, "load_average_end": load_end}
    print(
        f"\n{info['date']}, {info['cpu']} ({info['cpu_count']} CPUs), torch {info['torch']}, {args.threads} thread(s)"
    )
    print(setting)
    print(f"load average (1/5/15 min) at start: {load_start}; at end: {load_end}")
    print(markdown_table(headers, rows))
    args_json = {key: _portable(value) for key, value in vars(args).items()}
    write_json(args.out, {"benchmark": benchmark, **info, "args": args_json, **payload})


def _portable(value: Any) -> str:
    """An argument as text; a path relative to the repository root, so results name no machine's folders."""
    return os.path.relpath(value, ROOT) if isinstance(value, Path) else str(value)
