"""Mean and spread of each technique's accuracy over training seeds: a ranking one seed cannot give.

One run of p-tuning on 226 test records moved by ~6 points between two machines with everything else equal, and the
standard error of an accuracy on 226 records is ~1.7 points; so a comparison trains every technique with several
seeds (initialisation and batch order; the records stay the same) and reports the mean, the sample standard
deviation and the range of the per-seed accuracies.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from peft_continual.experiments.results import ResultRow, standard_error
from peft_continual.processes import main_process_only


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); ``None`` below two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


@dataclass
class SeedSummary:
    """One (task, stage) over its runs: the per-run accuracies and macro-F1, in run order, and their statistics.
    The runs differ in their training seed (``over="seed"``) or in their held-out fold (``over="fold"``)."""

    task: str
    stage: str
    seeds: list[int | None]
    """Each run's seed, or its fold (``over``)."""
    generation: list[float]
    restricted: list[float]
    macro_f1: list[float] = field(default_factory=list)
    over: str = "seed"
    train_fraction: float | None = None
    """The share of the training records of every run summarised (a data-fraction sweep); ``None``: all."""
    examples: list[int] = field(default_factory=list)
    """Test records of each run."""
    calibrated: list[float] = field(default_factory=list)
    """Restricted-choice accuracy after contextual calibration, of the runs that have it (``TaskEvaluation.calibrate``)."""

    def headline(self) -> tuple[str, list[float]]:
        """The accuracy compared across techniques: restricted choice where measured, else generation."""
        return ("restricted", self.restricted) if self.restricted else ("generation", self.generation)

    def standard_error(self) -> float | None:
        """Standard error of the headline mean: over runs ``std / sqrt(k)``; one run: the binomial error on its
        test records."""
        _, values = self.headline()
        if len(values) >= 2:
            return _std(values) / math.sqrt(len(values))
        if values and self.examples:
            return standard_error(values[0], self.examples[0])
        return None

    @property
    def generation_mean(self) -> float | None:
        return _mean(self.generation)

    @property
    def generation_std(self) -> float | None:
        return _std(self.generation)

    @property
    def restricted_mean(self) -> float | None:
        return _mean(self.restricted)

    @property
    def restricted_std(self) -> float | None:
        return _std(self.restricted)

    @property
    def calibrated_mean(self) -> float | None:
        return _mean(self.calibrated)

    @property
    def calibrated_std(self) -> float | None:
        return _std(self.calibrated)

    @property
    def macro_f1_mean(self) -> float | None:
        return _mean(self.macro_f1)

    @property
    def macro_f1_std(self) -> float | None:
        return _std(self.macro_f1)

    def to_dict(self) -> dict:
        names = ("generation_mean", "generation_std", "restricted_mean", "restricted_std", "macro_f1_mean",
                 "macro_f1_std", "calibrated_mean", "calibrated_std")  # fmt: skip
        return {
            "task": self.task,
            "stage": self.stage,
            "train_fraction": self.train_fraction,
            f"{self.over}s": self.seeds,
            "generation": self.generation,
            "restricted": self.restricted,
            "macro_f1": self.macro_f1,
            "calibrated": self.calibrated,
            **{name: getattr(self, name) for name in names},
        }


def summarize_over_seeds(rows: Sequence[ResultRow], over: str = "seed") -> list[SeedSummary]:
    """Group rows by (task, stage, training fraction), in first-seen order; rows with the same seed twice are kept as
    given. ``over``: the row field that tells the runs apart, ``seed`` or ``fold`` (k-fold cross-validation).

    Examples:
        >>> rows = [ResultRow("s", "lora", 0.90, 0.92, None, 0, 10, seed=0),
        ...         ResultRow("s", "lora", 0.94, 0.92, None, 0, 10, seed=1)]
        >>> (summary,) = summarize_over_seeds(rows)
        >>> round(summary.generation_mean, 2), round(summary.generation_std, 4), summary.restricted_std
        (0.92, 0.0283, 0.0)
    """
    groups: dict[tuple[str, str, float | None], SeedSummary] = {}
    for row in rows:
        key = (row.task, row.stage, row.train_fraction)
        summary = groups.setdefault(key, SeedSummary(row.task, row.stage, [], [], [], [], over, row.train_fraction))
        summary.seeds.append(getattr(row, over))
        summary.examples.append(row.examples)
        for values, value in ((summary.generation, row.generation), (summary.restricted, row.restricted),
                              (summary.macro_f1, row.macro_f1), (summary.calibrated, row.calibrated)):  # fmt: skip
            if value is not None:
                values.append(value)
    return list(groups.values())


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _range(values: Sequence[float]) -> str:
    return f"{100 * min(values):.1f}-{100 * max(values):.1f}" if len(values) >= 2 else "-"


def seed_table(summaries: Sequence[SeedSummary]) -> str:
    """A Markdown table: per (task, stage), the seeds (or folds), mean ± sample std and range of both accuracies and
    the mean ± std of the generated answers' macro-F1 (in %), and of the calibrated accuracy where some run has it."""
    over = summaries[0].over if summaries else "seed"
    swept = any(s.train_fraction is not None for s in summaries)
    calibrated = any(s.calibrated for s in summaries)
    lines = [
        f"| task | stage |{' train % |' if swept else ''} {over}s | generation acc. % (mean ± std) | range "
        "| restricted acc. % (mean ± std) | range | macro-F1 % (mean ± std) |"
        + (" calibrated acc. % (mean ± std) | range |" if calibrated else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if swept else "") + ("---|---|" if calibrated else ""),
    ]
    for s in summaries:
        seeds = ", ".join("-" if seed is None else str(seed) for seed in s.seeds)
        share = "" if not swept else f" {'100' if s.train_fraction is None else f'{100 * s.train_fraction:g}'} |"
        lines.append(
            f"| {s.task} | {s.stage} |{share} {seeds} | {_mean_std(s.generation_mean, s.generation_std)} "
            f"| {_range(s.generation)} | {_mean_std(s.restricted_mean, s.restricted_std)} | {_range(s.restricted)} "
            f"| {_mean_std(s.macro_f1_mean, s.macro_f1_std)} |"
            + (f" {_mean_std(s.calibrated_mean, s.calibrated_std)} | {_range(s.calibrated)} |" if calibrated else "")
        )
    return "\n".join(lines)


def noise_table(summaries: Sequence[SeedSummary]) -> str:
    """Markdown: per task (and training fraction), the best technique's headline accuracy against each other's, the
    difference, its standard error (``sqrt(se1² + se2²)``, each from ``standard_error``) and whether the difference
    is inside the noise (under two standard errors: not told apart at about 95%)."""
    lines = [
        "| task | best | other | difference (points) | s.e. of the difference | verdict |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float | None], list[SeedSummary]] = {}
    for s in summaries:
        if s.headline()[1]:
            groups.setdefault((s.task, s.train_fraction), []).append(s)
    for (task, fraction), members in groups.items():
        best = max(members, key=lambda s: _mean(s.headline()[1]))
        where = task if fraction is None else f"{task} ({100 * fraction:g}% of train)"
        for other in members:
            if other is best:
                continue
            difference = _mean(best.headline()[1]) - _mean(other.headline()[1])
            errors = [best.standard_error(), other.standard_error()]
            if None in errors:
                continue
            error = math.sqrt(sum(e * e for e in errors))
            verdict = "inside the noise" if difference < 2 * error else "outside the noise"
            lines.append(f"| {where} | {best.stage} | {other.stage} | {100 * difference:+.1f} | {100 * error:.1f} "
                         f"| {verdict} |")  # fmt: skip
    return "\n".join(lines)


@main_process_only
def plot_over_fractions(path: Path, summaries: Sequence[SeedSummary]) -> None:
    """Accuracy (restricted choice where measured, else generation) against the share of training records, one line
    per technique, the standard deviation over seeds as error bars, the fractions on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(s.stage for s in summaries):
        points = []
        for s in summaries:
            mean, std = (s.restricted_mean, s.restricted_std) if s.restricted else (s.generation_mean, s.generation_std)
            if s.stage == stage and mean is not None:
                points.append((1.0 if s.train_fraction is None else s.train_fraction, 100 * mean, 100 * (std or 0)))
        points.sort()
        axis.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], marker="o",
                      capsize=3, label=stage)  # fmt: skip
    axis.set_xscale("log")
    axis.set(xlabel="share of the training records", ylabel="accuracy % (mean ± std over seeds)", ylim=(0, 100),
             title=f"Accuracy against training data: {summaries[0].task}" if summaries else "")  # fmt: skip
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
