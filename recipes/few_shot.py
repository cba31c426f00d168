"""Prompting without training: zero-shot (``--k 0``) or few-shot (``k`` demonstrations from the training records
before each test input), the baselines every trained technique must beat.

Run from the repository root, in the venv:

    python recipes/few_shot.py --config recipes/configs/few_shot/smollm2_135m.yaml
    python recipes/few_shot.py --config recipes/configs/few_shot/zero_shot.yaml

Demonstrations are chosen as the task file's ``fewshot:`` section says (per class by default, seeded); the model
reads the task's template without its virtual tokens, after them. Nothing trains: of ``TrainingArguments`` only
``--output_dir``, ``--seed`` and ``--precision`` apply. Writes ``results.json``/``results.md`` into ``--output_dir``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

from peft_continual.data.fewshot import fewshot_template
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.single_task import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments


@dataclass
class FewShotArguments:
    """How many demonstrations."""

    k: int | None = field(
        default=None,
        metadata={"help": "Demonstrations (per class, or in all, as the task file's fewshot section says); 0: "
                  "zero-shot; None: the task file's k."},
    )  # fmt: skip


ARGUMENTS = (SingleTaskArguments, FewShotArguments, ContinualTrainingArguments)
TRAINS = False


def main(args: SingleTaskArguments, fewshot: FewShotArguments, training: ContinualTrainingArguments):
    technique, started = single_task.start_run(__file__, training, args, fewshot), time.time()
    # 1 records: the demonstrations come from the training records
    task = single_task.load_task(args)
    # 2 template: k demonstrations, then the test input (its virtual tokens removed)
    settings = task.spec.fewshot if fewshot.k is None else replace(task.spec.fewshot, k=fewshot.k)
    template = fewshot_template(task.spec.template, task.train, settings) if settings.k else None
    template = template or task.spec.template.without_virtual_tokens()
    # 3 tokenize
    _, prompts, _ = single_task.tokenize_task(args, task, template)
    # 4 base model, 5 nothing to wrap, 6 nothing to train
    model, base = single_task.load_model(args, training)
    # 7 evaluate
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=False)
    # 8 write the results (nothing is stored beside the base model)
    return single_task.finish(technique, result, training, args, trained=None, trainable=0, stored=0, base=base,
                              started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
