"""One task, one budget, every technique: each technique's own recipe run with each seed, then one table of mean ± std.

Run from the repository root, in the venv:

    python recipes/compare_techniques.py --config recipes/configs/compare_techniques/smollm2_135m.yaml

``--runs`` lists recipe configs (``recipes/configs/<recipe>/<name>.yaml``; the folder names the recipe,
``recipes/<recipe>.py``). Every other key of this config, and every other flag, is given to each run: the task, the
records, the base model and the training budget are therefore the same for all, and each technique keeps its own
learning rate and settings from its config. Each run goes into ``<output_dir>/<technique>/seed_<seed>``; a run that
finished before is read back (its settings must match), an interrupted one resumes from its last checkpoint, so
techniques and seeds can be added to a comparison later. Recipes that train nothing run with the first seed only.

``--folds K`` compares by k-fold cross-validation instead (NeMo's protocol; one seed): each run trains on K-1 folds
of the task's training records and is evaluated on the held-out one, for every fold (``<technique>/fold_<i>``;
stratified by label, ``peft_continual.experiments.folds``), and the table gives the mean ± std over the folds.

``--train_fractions 1.0 0.1 0.05 0.01`` sweeps the share of training records (stratified; each seed draws its own
subset, ``peft_continual.experiments.subsets``): every technique at every fraction with every seed
(``<technique>/fraction_<f>/seed_<seed>``), a table per fraction and ``fraction_sweep.png``, accuracy against the
fraction with the seeds' standard deviation as error bars, one line per technique.

``--k_shot_splits 16-13 16-21 16-42 16-87 16-100`` is LM-BFF's protocol: every technique trains on each K-shot split
of the task's data set (``<dataset>/k_shot/<split>/train.jsonl``, K examples per class) with the split's seed,
chooses its checkpoint on the split's development records (with ``eval_strategy``, ``load_best_model_at_end`` and
``metric_for_best_model: task_accuracy``; never on the test split) and is evaluated on the full test split; the table
gives the mean ± std over the splits (``recipes/configs/compare_techniques/lmbff_sst2.yaml``).
"""

from __future__ import annotations

import runpy
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from peft_continual.errors import ConfigError
from peft_continual.experiments.cli import parse_and_pass_on, parse_config_and_flags, run_recipe, without_flags
from peft_continual.experiments.results import ResultRow, show_results, write_results
from peft_continual.experiments.seed_summary import (
    noise_table,
    plot_over_fractions,
    seed_table,
    summarize_over_seeds,
)
from peft_continual.experiments.single_task import TRAINING_SETTINGS, finished_run
from peft_continual.machine import machine_facts

RECIPES = Path(__file__).resolve().parent


@dataclass
class ComparisonArguments:
    """Which runs, with which seeds, where; every other setting is passed on to the runs."""

    runs: list[str] = field(
        default_factory=list,
        metadata={"help": "Recipe configs, recipes/configs/<recipe>/<name>.yaml, one per technique."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Training seeds (initialisation, batch order) of every run that trains; the records are "
                  "the same for all (--records_seed). A ranking needs 3 or more."},
    )  # fmt: skip
    output_dir: str = field(default="outputs/compare_techniques", metadata={"help": "Where every run's folder goes."})
    train_fractions: list[float] = field(
        default_factory=list,
        metadata={"help": "Data-fraction sweep: train every run on each of these shares of the training records, "
                  "with every seed (each seed draws its own subset); empty: all records."},
    )  # fmt: skip
    k_shot_splits: list[str] = field(
        default_factory=list,
        metadata={"help": "LM-BFF: the K-shot split folders (<dataset>/k_shot/<split>, e.g. 16-13), each run with "
                  "the seed its name ends with; mean ± std over the splits."},
    )  # fmt: skip
    folds: int | None = field(
        default=None,
        metadata={"help": "k-fold cross-validation on the training records (one seed): every run once per fold, "
                  "mean ± std over the folds; None: evaluate on the test split, over --seeds."},
    )  # fmt: skip


def main(comparison: ComparisonArguments, passed_on: list[str]) -> list[ResultRow]:
    output_dir, started = Path(comparison.output_dir), time.time()
    protocols = [flag for flag, value in (("--folds", comparison.folds), ("--train_fractions", comparison.train_fractions),
                                          ("--k_shot_splits", comparison.k_shot_splits)) if value]  # fmt: skip
    if len(protocols) > 1:
        raise ConfigError(f"{' and '.join(protocols)}: one protocol at a time")
    if comparison.folds is not None and len(comparison.seeds) != 1:
        raise ConfigError(f"--folds: cross-validation runs one seed (the spread is over the folds), got --seeds "
                          f"{comparison.seeds}")  # fmt: skip
    rows: list[ResultRow] = []
    for config in comparison.runs:
        recipe_file, technique = recipe_of(config)
        recipe = runpy.run_path(str(recipe_file))
        # a recipe that trains nothing runs once (per fold) and gets no training flags (it would refuse them)
        given = passed_on if recipe["TRAINS"] else without_flags(passed_on, TRAINING_SETTINGS)
        for run, run_flags in runs_of(comparison, recipe["TRAINS"]):
            flags = ["--config", config, *given, *run_flags, "--output_dir",
                     str(output_dir / technique.replace("+", "_") / run)]  # fmt: skip
            arguments = parse_config_and_flags(recipe["ARGUMENTS"], flags)
            rows += finished_run(str(recipe_file), arguments[-1], *arguments[:-1]) or recipe["main"](*arguments)

    # the table: mean ± std per technique over its seeds (or folds), then every run
    over = "fold" if comparison.folds is not None else "k_shot" if comparison.k_shot_splits else "seed"
    summaries = summarize_over_seeds(rows, over=over)
    extra = {
        "command": " ".join(["python", *sys.argv]),
        "runs": comparison.runs,
        "passed_on": " ".join(passed_on),
        "seeds": comparison.seeds,
        "folds": comparison.folds,
        "train_fractions": comparison.train_fractions,
        "k_shot_splits": comparison.k_shot_splits,
        f"over_{over}s": [summary.to_dict() for summary in summaries],
        "machine": machine_facts(),
        "minutes": round((time.time() - started) / 60, 1),
    }
    spread = (f"{comparison.folds} folds" if comparison.folds is not None else f"the K-shot splits "
              f"{comparison.k_shot_splits}" if comparison.k_shot_splits else f"seeds {comparison.seeds}")  # fmt: skip
    summary = (f"Mean ± sample standard deviation over {spread}:\n\n{seed_table(summaries)}\n\nThe best technique "
               f"against each other (headline accuracy: restricted choice where measured; a difference under two "
               f"standard errors cannot be told from noise):\n\n{noise_table(summaries)}")  # fmt: skip
    write_results(output_dir, rows, extra, f"Techniques compared on {rows[0].task}", summary=summary)
    if comparison.train_fractions:
        plot_over_fractions(output_dir / "fraction_sweep.png", summaries)
    show_results(output_dir)
    return rows


def runs_of(comparison: ComparisonArguments, trains: bool) -> list[tuple[str, list[str]]]:
    """``(folder, flags)`` of each run of one technique: every fold with the one seed; else every seed (the first
    only for a recipe that trains nothing), at every training fraction of a sweep."""
    if comparison.folds is not None:
        return [(f"fold_{fold}", ["--seed", str(comparison.seeds[0]), "--folds", str(comparison.folds), "--fold",
                                  str(fold)]) for fold in range(comparison.folds)]  # fmt: skip
    if comparison.k_shot_splits:  # LM-BFF: the split's seed trains too
        return [(f"k_shot_{split}", ["--k_shot", split, "--seed", split.rsplit("-", 1)[-1]])
                for split in comparison.k_shot_splits]  # fmt: skip
    seeds = comparison.seeds if trains else comparison.seeds[:1]
    if not comparison.train_fractions:
        return [(f"seed_{seed}", ["--seed", str(seed)]) for seed in seeds]
    return [(f"fraction_{fraction:g}/seed_{seed}", ["--seed", str(seed), "--train_fraction", str(fraction),
                                                     "--fraction_seed", str(seed)])
            for fraction in comparison.train_fractions for seed in seeds]  # fmt: skip


def recipe_of(config: str) -> tuple[Path, str]:
    """The recipe a config belongs to (its folder's name) and the run's technique name (``technique:`` in the
    config, else the recipe's name)."""
    path = Path(config)
    recipe_file = RECIPES / f"{path.parent.name}.py"
    if not path.is_file() or not recipe_file.is_file():
        raise ConfigError(f"--runs {config}: not a recipe config (recipes/configs/<recipe>/<name>.yaml of a "
                          f"recipes/<recipe>.py)")  # fmt: skip
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return recipe_file, settings.get("technique") or path.parent.name


ARGUMENTS = ComparisonArguments

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:], parse=parse_and_pass_on)
