"""Continual multi-task p-tuning on one frozen base model: round 1 learns tasks A+B, round 2 adds task C.

Run (from the repository root, in the venv; the README's first command does the setup and then this):

    python recipes/continual_p_tuning.py --config recipes/configs/continual_p_tuning/smollm2_135m.yaml

Any field can be overridden with a flag (``--round_max_steps 40 20 --output_dir outputs/quick``). Killing the run
and starting the same command again resumes: finished rounds and the few-shot baseline are read back from the output
folder, an interrupted round continues from its last Trainer checkpoint.

Device and precision come from the hardware (``--precision auto``: see ``peft_continual.precision``); before the
long parts, a check of a few seconds runs the whole path once (``peft_continual.preflight``), so a machine that
cannot run it fails within a minute with a message that names the cause.

Several processes (``accelerate launch --multi_gpu --num_processes N recipes/continual_p_tuning.py ...``, or
``torchrun``): every process trains its share of each batch (DDP), evaluation splits the records between them, and
the main process writes every file (``peft_continual.processes``).

Stages: # 1 records -> # 2 templates -> # 3 tokenize -> # 4 base model -> # 4b check the whole path -> # 5 few-shot
baseline -> per round: # 6 wrap (fresh encoder; earlier tasks from the table) -> # 7 Trainer.train -> # 8 freeze
into the table and save (8b push) -> # 9 evaluate every task so far in mixed-task batches -> # 10 results table,
JSON, Markdown, plots (after every round). The bookkeeping (arguments, files, resume) is in
``peft_continual.experiments.continual_run``.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from peft import PeftModel, get_peft_model
from transformers import set_seed

from peft_continual import ContinualPromptConfig, PromptTokenizer
from peft_continual.data.fewshot import fewshot_template
from peft_continual.evaluation import ValidationAccuracy, evaluate_tasks
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.continual_run import (
    ContinualArguments,
    ProgressWriter,
    check_arguments,
    load_records,
    round_finished,
    round_log,
    round_rows,
    run_settings,
    save_round,
    write_round_card,
)
from peft_continual.experiments.frozen_recheck import records_to_evaluate
from peft_continual.experiments.hub import push_table
from peft_continual.experiments.results import (
    ResultRow,
    evaluation_key,
    read_saved_rows,
    result_row,
    save_rows,
    show_results,
)
from peft_continual.experiments.run_settings import check_run_settings
from peft_continual.experiments.task_files import load_task_specs, rounds_of
from peft_continual.models import load_base_model
from peft_continual.preflight import check_continual_run
from peft_continual.processes import main_process_only
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume


def main(recipe: ContinualArguments, training: ContinualTrainingArguments) -> list[ResultRow]:
    output_dir = Path(training.output_dir)
    progress = ProgressWriter(output_dir)  # the clock starts
    # 1 records and 2 templates: one task file, the same records for every technique.
    specs = load_task_specs(recipe.tasks)
    rounds = rounds_of(specs)
    check_arguments(recipe, training, rounds)
    check_run_settings(output_dir, *run_settings(specs, recipe, training))  # a rerun resumes this run, not another
    records = load_records(specs, recipe, training.seed)
    # 3 tokenize (the same tokenizer and templates serve training, generation and scoring) and 4 the base model, on
    # the device that Trainer will train on (this process's GPU when there is one).
    base, tokenizer = load_base_model(recipe.model, base_model_id=recipe.base_model_id)
    base.to(training.device)
    prompts = PromptTokenizer(tokenizer, [s.template for s in specs], max_length=recipe.max_length)
    counts = {"base": sum(p.numel() for p in base.parameters())}
    shots = [fewshot_template(s.template, records.train[s.taskname], s.fewshot) for s in specs]

    # 4b the whole path once on a few rows, in the chosen precision: a machine that cannot run it stops here.
    checked = check_continual_run(
        base,
        tokenizer,
        first_round_config(recipe, rounds[0], tokenizer),
        [[s.template for s in r] for r in rounds],
        [
            prompts.tokenize_records([records.train[s.taskname][i] for s in r for i in range(2)]).examples
            for r in rounds
        ],
        [prompts(records.test[s.taskname][0], include_answer=False) for s in specs],
        [PromptTokenizer(tokenizer, shots)(records.test[s.taskname][0], include_answer=False) for s in specs],
        training.precision_choice,
    )
    main_process_only(print)(checked, flush=True)
    progress.clock.lap("load and check")

    # 5 few-shot baseline: the untouched base model, demonstrations from train, same normalisation and metrics
    # (evaluated once: read back while the prompts are the same).
    fewshot_records = [r for s in specs for r in records.test[s.taskname][: recipe.fewshot_eval_records]]
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
    progress.clock.lap("few-shot baseline")

    losses, hashes = {}, {}
    trained_in = {s.taskname: s.round for s in specs}
    for number, round_specs in enumerate(rounds, start=1):
        round_dir = output_dir / f"round_{number}"
        names = [s.taskname for s in round_specs]
        served = [s for s in specs if s.round <= number]
        if not round_finished(round_dir):
            # 6 wrap: a fresh encoder for this round's tasks; earlier tasks stay frozen rows of the table.
            set_seed(training.seed + number)  # the encoder's initialisation, the same on every (re)run and process
            if number == 1:
                model = get_peft_model(base, first_round_config(recipe, round_specs, tokenizer))
            else:
                model = PeftModel.from_pretrained(base, output_dir / f"round_{number - 1}" / "table", is_trainable=True)
                model.add_tasks([s.template for s in round_specs], tokenizer=tokenizer)
            trainable = model.get_nb_trainable_parameters()[0]
            # 7 train (resumes from the last checkpoint of an interrupted run); the table is pushed in 8b, never the
            # checkpoints.
            args = replace(training, output_dir=str(round_dir / "checkpoints"),
                           max_steps=recipe.round_max_steps[number - 1], push_to_hub=False)  # fmt: skip
            validation = [r for n in names for r in records.validation[n]]
            accuracy = None
            if recipe.validation_accuracy != "none":
                accuracy = ValidationAccuracy(prompts, validation, [s.evaluation for s in round_specs],
                                              mode=recipe.validation_accuracy, batch_size=recipe.eval_batch_size)  # fmt: skip
            trainer = build_trainer(
                model,
                args,
                prompts.tokenize_records([r for n in names for r in records.train[n]]).examples,
                tokenizer.pad_token_id,
                eval_dataset=prompts.tokenize_records(validation).examples,
                validation_accuracy=accuracy,
            )
            train_or_resume(trainer)
            # 8 freeze the round's tasks into the prompt table and save it (the adapter is the table alone).
            save_round(round_dir, model, trainer.state.log_history, trainable)
        progress.clock.lap(f"round {number} training")
        model = PeftModel.from_pretrained(base, round_dir / "table").eval()
        hashes[number] = model.prompt_table.row_hashes()
        losses[f"round {number}"], counts["trainable"] = round_log(round_dir)
        # 9 evaluate every task served so far, from one frozen model, rows of all tasks mixed in each batch; earlier
        # rounds' tasks on a sample whose answers must not have changed (read back when this very table was
        # evaluated on these very records before: a rerun costs seconds).
        served_tests = records_to_evaluate(records.test, trained_in, number, recipe.recheck_records)
        round_key = evaluation_key(served_tests, hashes[number])
        evaluated = read_saved_rows(round_dir / "evaluation.json", round_key)
        if evaluated is None:
            results = evaluate_tasks(
                model, prompts, served_tests, [s.evaluation for s in served], batch_size=recipe.eval_batch_size
            )
            evaluated = round_rows(output_dir, number, results, model.prompt_table, trained_in, hashes, counts)
            save_rows(round_dir / "evaluation.json", round_key, evaluated)
        rows += evaluated
        write_round_card(round_dir, model.peft_config["default"], evaluated, trained_in,
                         {"learning_rate": training.learning_rate, "steps": recipe.round_max_steps[number - 1],
                          "batch_size": training.per_device_train_batch_size, "encoder_type": recipe.encoder_type,
                          "precision": training.precision_choice.precision.value}, recipe)  # fmt: skip
        if training.push_to_hub:  # 8b the table and its card, one commit per round (--hub_model_id)
            push_table(round_dir / "table", training, f"Round {number}: {', '.join(names)}")
        progress.clock.lap(f"round {number} evaluation")
        # 10 results so far: a long run shows its finished rounds before the next one ends
        progress.write(number, len(rounds), rows, losses, training.precision_choice, hashes)
    show_results(output_dir)
    return rows


def first_round_config(recipe: ContinualArguments, round_specs: list, tokenizer) -> ContinualPromptConfig:
    """The method's config of round 1: its tasks' templates and the encoder settings."""
    return ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[s.template for s in round_specs],
        encoder_type=recipe.encoder_type,
        encoder_hidden_size=recipe.encoder_hidden_size,
        prompt_depth=recipe.prompt_depth,
        first_trained_layer=recipe.first_trained_layer,
    ).tokenize_tasknames(tokenizer)


ARGUMENTS = (ContinualArguments, ContinualTrainingArguments)

if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
