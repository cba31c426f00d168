"""Means and sample standard deviations over seeds, and their Markdown table."""

import statistics

import pytest

from peft_continual.experiments.results import ResultRow, markdown_table
from peft_continual.experiments.seed_summary import seed_table, summarize_over_seeds


def row(stage, generation, restricted, seed, task="sentiment"):
    return ResultRow(task, stage, generation, restricted, None, 0, 226, seed=seed)


def test_rows_group_by_task_and_stage_in_order_with_sample_statistics():
    rows = [
        row("lora", 0.90, 0.91, 0),
        row("p_tuning", 0.80, 0.85, 0),
        row("lora", 0.94, 0.93, 1),
        row("p_tuning", 0.86, 0.87, 1),
        row("lora", 0.95, 0.92, 2),
        row("lora", 0.50, None, 0, task="other"),
    ]
    lora, p_tuning, other = summarize_over_seeds(rows)
    assert (lora.stage, lora.seeds, p_tuning.seeds, other.task) == ("lora", [0, 1, 2], [0, 1], "other")
    assert lora.generation_mean == pytest.approx(statistics.fmean([0.90, 0.94, 0.95]))
    assert lora.generation_std == pytest.approx(statistics.stdev([0.90, 0.94, 0.95]))  # n - 1
    assert p_tuning.restricted_std == pytest.approx(statistics.stdev([0.85, 0.87]))
    assert other.generation_std is None and other.restricted_mean is None  # one seed; nothing restricted


def test_the_table_shows_mean_std_and_range_in_percent():
    table = seed_table(summarize_over_seeds([row("lora", 0.90, 0.91, 0), row("lora", 0.94, 0.93, 1)]))
    assert "| sentiment | lora | 0, 1 | 92.0 ± 2.8 | 90.0-94.0 | 92.0 ± 1.4 | 91.0-93.0 | - |" in table
    single = seed_table(summarize_over_seeds([row("zero_shot", 0.5, None, None)]))
    assert "| sentiment | zero_shot | - | 50.0 | - | - | - | - |" in single

    assert "calibrated" not in table + single


def test_calibrated_accuracy_gets_its_mean_std_and_range_where_runs_have_it():
    rows = [ResultRow("sentiment_no", "p_tuning", 0.5, 0.52, None, 0, 200, seed=seed, calibrated=calibrated)
            for seed, calibrated in enumerate([0.60, 0.64, 0.59])]  # fmt: skip
    rows.append(row("lora", 0.55, 0.55, 0, task="sentiment_no"))
    p_tuning, lora = summarize_over_seeds(rows)
    assert p_tuning.calibrated == [0.60, 0.64, 0.59] and lora.calibrated == []
    assert p_tuning.calibrated_std == pytest.approx(statistics.stdev([0.60, 0.64, 0.59]))
    assert p_tuning.to_dict()["calibrated_mean"] == pytest.approx(0.61)
    table = seed_table([p_tuning, lora]).splitlines()
    assert table[0].endswith("| calibrated acc. % (mean ± std) | range |")
    assert table[2].endswith(f"| 61.0 ± {100 * p_tuning.calibrated_std:.1f} | 59.0-64.0 |")
    assert table[3].endswith("| - | - |")
    assert {len(line.split("|")) for line in table} == {len(table[0].split("|"))}


def test_folds_summarize_like_seeds_with_their_macro_f1():
    rows = [ResultRow("sentiment", "lora", accuracy, None, None, 0, 20, fold=fold, macro_f1=f1)
            for fold, (accuracy, f1) in enumerate([(0.9, 0.8), (0.8, 0.6), (1.0, 1.0)])]  # fmt: skip
    (summary,) = summarize_over_seeds(rows, over="fold")
    assert summary.seeds == [0, 1, 2] and summary.to_dict()["folds"] == [0, 1, 2]
    assert summary.macro_f1_mean == pytest.approx(0.8) and summary.macro_f1_std == pytest.approx(0.2)
    table = seed_table([summary])
    assert "| task | stage | folds |" in table and "| sentiment | lora | 0, 1, 2 | 90.0 ± 10.0 |" in table
    assert table.endswith("| 80.0 ± 20.0 |")
    assert "| fold |" in markdown_table(rows) and "| lora | 1 | 80.0 ± 8.9 |" in markdown_table(rows)


def test_the_rows_table_gets_a_seed_column_only_when_rows_have_seeds():
    assert "| seed |" not in markdown_table([row("lora", 0.9, 0.9, None)])
    seeded = markdown_table([row("lora", 0.9, 0.9, 2), row("zero_shot", 0.5, 0.5, None)])
    assert (
        "| task | stage | seed |" in seeded and "| lora | 2 | 90.0 ± 2.0 |" in seeded and "| zero_shot | - |" in seeded
    )


def test_the_runs_of_a_fraction_sweep_are_told_apart_by_share_and_seed_in_both_tables():
    from peft_continual.experiments.results import per_class_table

    classes = {"negative": {"gold": 30, "predicted": 8, "recall": 0.1}}
    rows = [ResultRow("sentiment", "p_tuning", accuracy, None, None, 0, 226, seed=seed, train_fraction=fraction,
                      per_class=classes) for fraction, seed, accuracy in [(1.0, 0, 0.93), (0.01, 0, 0.76)]]  # fmt: skip
    table = markdown_table(rows)
    assert "| task | stage | seed | train % | generation acc. % (± s.e.) |" in table
    assert "| p_tuning | 0 | 100 | 93.0 ± 1.7 |" in table and "| p_tuning | 0 | 1 | 76.0 ± 2.8 |" in table
    assert all(line.count("|") == table.splitlines()[0].count("|") for line in table.splitlines())
    per_class = per_class_table(rows).splitlines()
    assert per_class[0] == "| task | stage | seed | train % | class | gold | predicted | recall % |"
    assert per_class[3] == "| sentiment | p_tuning | 0 | 1 | negative | 30 | 8 | 10.0 |"
    assert all(line.count("|") == per_class[0].count("|") for line in per_class)


def test_the_best_technique_is_told_apart_from_others_only_outside_two_standard_errors():
    from peft_continual.experiments.seed_summary import noise_table

    rows = [row("lora", 0.9, accuracy, seed) for seed, accuracy in enumerate([0.948, 0.951, 0.945])]
    rows += [row("p_tuning", 0.9, accuracy, seed) for seed, accuracy in enumerate([0.92, 0.935, 0.938])]
    rows += [row("ia3", 0.9, accuracy, seed) for seed, accuracy in enumerate([0.93, 0.96, 0.94])]
    rows += [row("zero_shot", 0.5, 0.6, None)]
    lines = noise_table(summarize_over_seeds(rows)).splitlines()[2:]
    # lora 94.8 vs p_tuning 93.1: s.e. of the means 0.17 and 0.56 points -> 0.58; 1.7 points is outside
    assert lines[0] == "| sentiment | lora | p_tuning | +1.7 | 0.6 | outside the noise |"
    # ia3 94.3 ± 1.5 over 3 seeds: s.e. 0.9 -> a 0.5-point difference is inside
    assert lines[1] == "| sentiment | lora | ia3 | +0.5 | 0.9 | inside the noise |"
    # one run of zero-shot: its binomial error on 226 records (3.3 points)
    assert lines[2] == "| sentiment | lora | zero_shot | +34.8 | 3.3 | outside the noise |"
