"""Full fine-tuning on one task: every weight of the base model trains (the upper reference, stored whole).

Run from the repository root, in the venv:

    python recipes/full_finetune.py --config recipes/configs/full_finetune/smollm2_135m.yaml

Like every technique of the comparison (``recipes/compare_techniques.py``): the model reads the task's template
without its virtual tokens, is evaluated by the same code, takes every ``TrainingArguments`` flag, writes
``results.json``/``results.md`` and the model (``final/``, unless ``--save_model false``) into ``--output_dir``.
"""

from __future__ import annotations

import sys
import time

from peft_continual.errors import ConfigError
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ARGUMENTS = (SingleTaskArguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, training: ContinualTrainingArguments):
    if args.bits is not None:
        raise ConfigError("--bits: a quantized base cannot be fully fine-tuned (bitsandbytes weights are frozen)")
    technique, started = single_task.start_run(__file__, training, args), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template: the text alone
    template = task.spec.template.without_virtual_tokens()
    # 3 tokenize
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, template)
    # 4 base model: every weight trains
    model, parameters = single_task.load_model(args, training)
    model.requires_grad_(True)
    # 5 no wrapper
    # 6 train
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id, virtual_tokens=False,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    # 7 evaluate
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=False)
    # 8 save the whole model, write the results
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=parameters,
                              stored=parameters, base=parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
