"""Evaluate a saved prompt table on a task's test records, training nothing: a continual run's
``round_<k>/table``, any ``save_pretrained`` folder of this method, or a Hub id.

Run from the repository root, in the venv:

    python recipes/evaluate_table.py --config recipes/configs/evaluate_table/smollm2_135m.yaml \
        --table outputs/continual_p_tuning/round_2/table --taskname sentiment_no
    python recipes/evaluate_table.py --config recipes/configs/evaluate_table/sentiment_on_norwegian.yaml \
        --table outputs/continual_p_tuning/round_1/table

The task file says which records the task reads (its ``dataset``, ``eval_split``, ``eval_records``) and how they are
scored; the task must be frozen in the table, with the template it was trained with (checked), and ``--model`` must
be the table's base model (checked by the table's fingerprint when it loads). A task file that points a finished
task at another dataset with the same fields measures how far its prompt carries there before any training (the
second command: the English ``sentiment`` rows on the Norwegian test split). Nothing trains: of ``TrainingArguments``
only ``--output_dir``, ``--seed`` and ``--precision`` apply. Writes ``results.json``/``results.md`` into
``--output_dir``, with per-class counts.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from peft import PeftConfig, PeftModel

from peft_continual import ContinualPromptConfig
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments


@dataclass
class TableArguments:
    """Which table."""

    table: str = field(
        metadata={"help": "The prompt table: a folder written by save_pretrained (a continual run's round_<k>/table) "
                  "or a Hub id."},
    )  # fmt: skip


ARGUMENTS = (SingleTaskArguments, TableArguments, ContinualTrainingArguments)
TRAINS = False


def main(args: SingleTaskArguments, table: TableArguments, training: ContinualTrainingArguments):
    single_task.refuse_training_flags(training, "evaluating a saved table")
    started = time.time()
    # 1 records and 2 template: the task file's, which must be a frozen task of the table with the same template
    task = single_task.load_test_task(args)
    check_table_task(PeftConfig.from_pretrained(table.table), task.spec.template, table.table)
    # 3 the tokenizer of the prompts (nothing to train: no training examples)
    prompts = PromptTokenizer(single_task.load_tokenizer(args), [task.spec.template], max_length=args.max_length)
    # 4 base model and 5 the frozen table on it (a table of another base model stops here, before any output)
    base_model, base = single_task.load_model(args, training)
    model = PeftModel.from_pretrained(base_model, table.table).eval()
    technique = single_task.start_run(__file__, training, args, table)
    # 7 evaluate
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=True)
    # 8 write the results (the table is stored already)
    stored = model.prompt_table.counts()[task.name] * model.prompt_table.token_dim
    return single_task.finish(technique, result, training, args, trained=None, trainable=0, stored=stored, base=base,
                              started=started)  # fmt: skip


TRAINING_ONLY = ("init_text", "answer_only_loss")
"""Template keys that shape training only: a frozen task's rows do not depend on them at evaluation."""


def check_table_task(config: Any, template: TaskTemplate, where: str) -> None:
    """The table must be this method's, hold the task frozen into its rows, and have been trained with the task
    file's template: other virtual-token counts would not fit its rows, and other text around them is another prompt
    than the one measured.

    Raises:
        ConfigError: another PEFT method's adapter, no frozen task of that name, or another template (each
            differing key named).
    """
    if not isinstance(config, ContinualPromptConfig):
        kind = getattr(config.peft_type, "value", config.peft_type)
        raise ConfigError(f"{where} holds a {kind} adapter, not a prompt table of this method")
    if template.taskname not in config.frozen_tasks:
        in_training = [t["taskname"] for t in config.templates if t["taskname"] not in config.frozen_tasks]
        raise ConfigError(
            f"table {where} has no frozen task {template.taskname!r}; its frozen tasks: {sorted(config.frozen_tasks)}"
            + (f" (in training, not in the table: {in_training})" if in_training else "")
        )
    (trained,) = [t for t in config.templates if t["taskname"] == template.taskname]
    given = template.to_dict()
    differing = sorted(key for key in (trained.keys() | given.keys()) - set(TRAINING_ONLY)
                       if trained.get(key) != given.get(key))  # fmt: skip
    if differing:
        shown = "; ".join(f"{key}: {trained.get(key)!r} in the table, {given.get(key)!r} in the task file"
                          for key in differing)  # fmt: skip
        raise ConfigError(f"task {template.taskname!r}: the task file's template is not the table's ({shown})")


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
