"""Mean and spread of each technique's accuracy over training seeds: a ranking one seed cannot give.

One run of p-tuning on 226 test records moved by ~6 points between two machines with everything else equal, and the
standard error of an accuracy on 226 records is ~1.7 points; so a comparison trains every technique with several
seeds (initialisation and batch order; the records stay the same) and reports the mean, the sample standard
deviation and the range of the per-seed accuracies.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from peft_continual.experiments.results import ResultRow


def _mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); ``None`` below two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


@dataclass
class SeedSummary:
    """One (task, stage) over its seeds: the per-seed accuracies, in seed order, and their statistics."""

    task: str
    stage: str
    seeds: list[int | None]
    generation: list[float]
    restricted: list[float]

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

    def to_dict(self) -> dict:
        statistics_ = {
            name: getattr(self, name)
            for name in ("generation_mean", "generation_std", "restricted_mean", "restricted_std")
        }
        return {
            "task": self.task,
            "stage": self.stage,
            "seeds": self.seeds,
            "generation": self.generation,
            "restricted": self.restricted,
            **statistics_,
        }


def summarize_over_seeds(rows: Sequence[ResultRow]) -> list[SeedSummary]:
    """Group rows by (task, stage), in first-seen order; rows with the same seed twice are kept as given.

    Examples:
        >>> rows = [ResultRow("s", "lora", 0.90, 0.92, None, 0, 10, seed=0),
        ...         ResultRow("s", "lora", 0.94, 0.92, None, 0, 10, seed=1)]
        >>> (summary,) = summarize_over_seeds(rows)
        >>> round(summary.generation_mean, 2), round(summary.generation_std, 4), summary.restricted_std
        (0.92, 0.0283, 0.0)
    """
    groups: dict[tuple[str, str], SeedSummary] = {}
    for row in rows:
        summary = groups.setdefault((row.task, row.stage), SeedSummary(row.task, row.stage, [], [], []))
        summary.seeds.append(row.seed)
        if row.generation is not None:
            summary.generation.append(row.generation)
        if row.restricted is not None:
            summary.restricted.append(row.restricted)
    return list(groups.values())


def _mean_std(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _range(values: Sequence[float]) -> str:
    return f"{100 * min(values):.1f}-{100 * max(values):.1f}" if len(values) >= 2 else "-"


def seed_table(summaries: Sequence[SeedSummary]) -> str:
    """A Markdown table: per (task, stage), the seeds, mean ± sample std and range of both accuracies (in %)."""
    lines = [
        "| task | stage | seeds | generation acc. % (mean ± std) | range | restricted acc. % (mean ± std) | range |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        seeds = ", ".join("-" if seed is None else str(seed) for seed in s.seeds)
        lines.append(
            f"| {s.task} | {s.stage} | {seeds} | {_mean_std(s.generation_mean, s.generation_std)} "
            f"| {_range(s.generation)} | {_mean_std(s.restricted_mean, s.restricted_std)} | {_range(s.restricted)} |"
        )
    return "\n".join(lines)
