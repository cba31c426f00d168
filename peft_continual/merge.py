"""Merge prompt tables: tasks trained by different people on the same base model, served as one table.

Two teams each trained and froze their tasks (``freeze_tasks``, ``save_pretrained``, maybe ``push_to_hub``);
``merge_tables`` builds one table folder that holds every task, from local folders or Hub repositories, without a
base model and without touching a row: each task's rows are copied bit for bit, with its template, its virtual-token
count and its task-name ids. It refuses what would serve wrong answers or lose work: tables of another base model
(the fingerprints differ; both are named), tasks still in training (no rows yet), tables that carry LoRA/IA3 weights
(one set of weights cannot serve two tables' tasks), tables of different ``prompt_depth``, and a task name found in two tables, unless the user says which
one to keep (``prefer``) or renames one (``renames``). The merged table's card lists where each task came from and
keeps the results the sources' cards listed.

Command line (also ``peft-continual-merge``)::

    python -m peft_continual.merge merged/ team-a/table user/team-b-table \\
        --rename user/team-b-table:sentiment=sentiment_fin --prefer intent=team-a/table
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import save_file

from peft_continual._io import files_into_place
from peft_continual.errors import AdapterFileError, ConfigError, PeftContinualError, allowed
from peft_continual.model_card import write_table_card
from peft_continual.tuners.continual_prompt import safe_load
from peft_continual.tuners.continual_prompt._peft_compat import PEFT_TYPE
from peft_continual.tuners.continual_prompt.config import ContinualPromptConfig
from peft_continual.tuners.continual_prompt.safe_load import (
    TABLE_KEY,
    check_adapter_weights,
    check_table_shapes,
    hub_adapter_folder,
    local_adapter_folder,
    read_adapter_config,
)
from peft_continual.tuners.continual_prompt.table import task_key
from peft_continual.version import __version__

FINGERPRINT_KEYS = ("hidden_size", "vocab_size", "embedding_sha256")
_ROW_KEY = "base_model." + TABLE_KEY.removesuffix("task:")  # + task_key(name): how save_pretrained names the rows
_PER_TASK = ("taskname_token_ids", "init_token_ids")


@dataclass
class SourceTable:
    """One table to merge: where it came from, its config (``adapter_config.json``) and its rows, task -> ``(n, D)``."""

    source: str
    folder: Path
    config: dict[str, Any]
    rows: dict[str, torch.Tensor]

    def template(self, task: str) -> dict[str, Any]:
        return next(t for t in self.config["templates"] if t["taskname"] == task)

    def results(self) -> dict[str, Any]:
        """The results its card (``README.md``) lists, task -> values; none without a card of this library."""
        path = self.folder / "README.md"
        if not path.is_file():
            return {}
        try:
            facts = ModelCard.load(path).data.to_dict().get("peft_continual") or {}
        except Exception:  # noqa: BLE001 - a card is documentation: a foreign or damaged one carries nothing over
            return {}
        return dict(facts.get("results") or {})


def read_table(source: str | Path, revision: str | None = None, token: str | bool | None = None) -> SourceTable:
    """A finished table from a local folder or a Hub repository (through the Hub cache), checked as a load is.

    Raises:
        AdapterFileError: no adapter there, damaged or pickled files, rows that do not match the config.
        ConfigError: not a table of this library, tasks still in training, LoRA/IA3 weights in it.
    """
    name = str(source)
    folder = local_adapter_folder(source)
    if folder is None:
        folder = hub_adapter_folder(name, PEFT_TYPE.value, revision=revision, token=token)
        _fetch_card(name, revision=revision, token=token)  # its results carry over into the merged card
    if folder is None or not (folder / CONFIG_NAME).is_file():
        raise AdapterFileError(
            f"{name}: no prompt table there: not a local folder with {CONFIG_NAME}, nor a Hub repository with a table "
            "of peft-continual (missing, unreachable, or another PEFT method)"
        )
    config = read_adapter_config(folder)
    if config.get("peft_type") != PEFT_TYPE.value:
        raise ConfigError(f"{name} is a {config.get('peft_type')} adapter, not a prompt table of peft-continual")
    shapes = check_adapter_weights(folder)
    check_table_shapes(folder, config, shapes)
    if config.get("stacked_adapters"):
        raise ConfigError(
            f"{name} carries stacked adapters {allowed(config['stacked_adapters'])}: one set of LoRA/IA3 weights "
            "cannot serve another table's tasks; merge tables of prompts alone (model.unload() or "
            "merge_and_unload() before save_pretrained)"
        )
    if config.get("training_tasks") or any(TABLE_KEY not in key for key in shapes):
        raise ConfigError(
            f"{name} has tasks still in training ({config.get('training_tasks')}): freeze them first "
            "(model.freeze_tasks(), then save_pretrained) so that their rows are in the table"
        )
    with safe_open(str(folder / SAFETENSORS_WEIGHTS_NAME), framework="pt") as weights:
        rows = {task: weights.get_tensor(_ROW_KEY + task_key(task)) for task in config["frozen_tasks"]}
    return SourceTable(name, folder, config, rows)


def _fetch_card(repo_id: str, **download: Any) -> None:
    """Put a Hub table's ``README.md`` into the cache beside its config (none, or no network: nothing to carry)."""
    with contextlib.suppress(Exception):  # the card is documentation; the merge does not depend on it
        safe_load.hf_hub_download(repo_id, "README.md", **download)


def merge_tables(
    sources: Sequence[str | Path],
    output_dir: str | Path,
    *,
    renames: Mapping[str, Mapping[str, str]] | None = None,
    prefer: Mapping[str, str] | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Write one table holding the tasks of ``sources`` into ``output_dir`` (atomically); return the folder.

    Args:
        sources: Table folders or Hub repository ids, all trained on the same base model.
        output_dir: The merged table's folder (loadable with ``PeftModel.from_pretrained`` like any table).
        renames: Source (as given) -> {task: new name}: keeps both of two tasks with one name.
        prefer: Task name (after renames) -> the source whose rows to keep where several hold it.
        revision, token: For Hub sources (``hf_hub_download``'s).

    Raises:
        ConfigError: sources of different base models (both named), a task name in several sources without
            ``prefer``, a ``renames``/``prefer`` entry that names no source or task; and ``read_table``'s errors.
    """
    renames, prefer = dict(renames or {}), dict(prefer or {})
    if len(sources) < 2:
        raise ConfigError(f"merging needs two tables or more, got {list(map(str, sources))}")
    unknown = sorted(set(renames) - set(map(str, sources)))
    if unknown:
        raise ConfigError(f"--rename names source(s) {unknown} that are not among the tables {allowed(sources)}")
    tables = [read_table(source, revision=revision, token=token) for source in sources]
    _check_same_base(tables)
    _check_same_depth(tables)
    chosen = _choose_tasks(tables, renames, prefer)  # new name -> (table, old name)
    merged = _merged_config(tables[0].config, chosen)
    rows = {_ROW_KEY + task_key(new): table.rows[old].contiguous() for new, (table, old) in chosen.items()}
    config = ContinualPromptConfig(**{key: value for key, value in merged.items() if key != "peft_type"})
    results = {table.source: table.results() for table in tables}  # each card read once
    output_dir = Path(output_dir)
    with files_into_place(output_dir, ".partial-", last=[CONFIG_NAME]) as staging:
        save_file(rows, str(staging / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        (staging / CONFIG_NAME).write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        write_table_card(
            staging,
            config,
            name=output_dir.name,
            sources={new: table.source for new, (table, _) in chosen.items()},
            carried_results={
                new: results[table.source][old] for new, (table, old) in chosen.items() if old in results[table.source]
            },  # fmt: skip
        )
    return output_dir


def _check_same_base(tables: Sequence[SourceTable]) -> None:
    """Refuse tables trained on different base models (rows of one are meaningless on the other)."""
    first = tables[0]
    for table in tables[1:]:
        a, b = first.config.get("base_model_fingerprint") or {}, table.config.get("base_model_fingerprint") or {}
        differing = [key for key in FINGERPRINT_KEYS if a.get(key) != b.get(key)]
        if differing:
            raise ConfigError(
                f"{first.source} was trained on base model {_base(first)} and {table.source} on {_base(table)}; they "
                f"differ in {', '.join(differing)}, so their rows cannot serve from one base model"
            )


def _check_same_depth(tables: Sequence[SourceTable]) -> None:
    """Refuse tables of different ``prompt_depth``: one table's rows are all ``(n, prompt_depth * D)``."""
    depths = {table.source: table.config.get("prompt_depth", 1) for table in tables}
    if len(set(depths.values())) > 1:
        raise ConfigError(
            f"the tables have different prompt_depth ({', '.join(f'{s}: {d}' for s, d in depths.items())}): the "
            "layers their rows act on differ, so they cannot serve from one table"
        )


def _base(table: SourceTable) -> str:
    facts = table.config.get("base_model_fingerprint") or {}
    return (f"{table.config.get('base_model_name_or_path') or facts.get('name_or_path')!r} (hidden_size="
            f"{facts.get('hidden_size')}, vocab_size={facts.get('vocab_size')}, embedding sha256 "
            f"{str(facts.get('embedding_sha256'))[:12]}...)")  # fmt: skip


def _choose_tasks(
    tables: Sequence[SourceTable], renames: Mapping[str, Mapping[str, str]], prefer: Mapping[str, str]
) -> dict[str, tuple[SourceTable, str]]:
    """New task name -> (table, its name there), in the sources' order; conflicts resolved by ``prefer`` only."""
    holders: dict[str, list[tuple[SourceTable, str]]] = {}
    for table in tables:
        renamed = dict(renames.get(table.source, {}))
        missing = sorted(set(renamed) - set(table.rows))
        if missing:
            raise ConfigError(
                f"--rename {table.source}: task(s) {missing} are not in it; its tasks: {allowed(table.rows)}"
            )
        for task in table.rows:
            holders.setdefault(renamed.get(task, task), []).append((table, task))
    unknown = sorted(set(prefer) - set(holders))
    if unknown:
        raise ConfigError(f"--prefer names task(s) {unknown} that no table holds; tasks: {allowed(holders)}")
    chosen = {}
    for name, candidates in holders.items():
        if len(candidates) == 1:
            chosen[name] = candidates[0]
            continue
        sources = [table.source for table, _ in candidates]
        if name not in prefer:
            raise ConfigError(
                f"task {name!r} is in {sources}: keep one with --prefer {name}=<source>, or rename one with "
                f"--rename <source>:{name}=<new name>"
            )
        picked = [candidate for candidate in candidates if candidate[0].source == prefer[name]]
        if not picked:
            raise ConfigError(f"--prefer {name}={prefer[name]}: that table does not hold {name!r}; it is in {sources}")
        chosen[name] = picked[0]
    return chosen


def _merged_config(first: Mapping[str, Any], chosen: Mapping[str, tuple[SourceTable, str]]) -> dict[str, Any]:
    """The first table's config with every chosen task's template, count and ids (renamed), nothing in training."""
    merged = dict(first)
    merged["templates"] = [{**table.template(old), "taskname": new} for new, (table, old) in chosen.items()]
    merged["frozen_tasks"] = {new: table.config["frozen_tasks"][old] for new, (table, old) in chosen.items()}
    for key in _PER_TASK:
        merged[key] = {new: table.config.get(key, {})[old] for new, (table, old) in chosen.items()
                       if old in table.config.get(key, {})}  # fmt: skip
    merged["training_tasks"] = []
    merged["peft_continual_version"] = __version__
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """``peft-continual-merge OUTPUT SOURCE SOURCE... [--rename SOURCE:TASK=NEW] [--prefer TASK=SOURCE]``."""
    parser = argparse.ArgumentParser(prog="peft-continual-merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="Folder of the merged table.")
    parser.add_argument("sources", nargs="+", help="Table folders or Hub repository ids (two or more).")
    parser.add_argument("--rename", action="append", default=[], metavar="SOURCE:TASK=NEW",
                        help="Rename a task of one source (keeps both of two tasks with one name).")  # fmt: skip
    parser.add_argument("--prefer", action="append", default=[], metavar="TASK=SOURCE",
                        help="Keep this source's rows of a task that several sources hold.")  # fmt: skip
    parser.add_argument("--revision", default=None, help="Hub revision of Hub sources.")
    args = parser.parse_args(argv)
    try:
        renames: dict[str, dict[str, str]] = {}
        for entry in args.rename:
            source, _, change = entry.rpartition(":")
            old, _, new = change.partition("=")
            if not (source and old and new):
                raise ConfigError(f"--rename {entry!r}: write SOURCE:TASK=NEW")
            renames.setdefault(source, {})[old] = new
        prefer = {}
        for entry in args.prefer:
            task, _, source = entry.partition("=")
            if not (task and source):
                raise ConfigError(f"--prefer {entry!r}: write TASK=SOURCE")
            prefer[task] = source
        folder = merge_tables(args.sources, args.output_dir, renames=renames, prefer=prefer, revision=args.revision)
    except PeftContinualError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"merged {len(args.sources)} tables into {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
