"""LoRA on one task (PEFT's ``LoraConfig``); QLoRA with ``--bits 4`` (a 4-bit nf4 base, bitsandbytes) or 8.

Run from the repository root, in the venv:

    python recipes/lora.py --config recipes/configs/lora/smollm2_135m.yaml
    python recipes/lora.py --config recipes/configs/lora/qlora.yaml

The model reads the task's template without its virtual tokens: the text the prompt-tuned models read, and is
evaluated by the same code as every technique (``recipes/compare_techniques.py`` runs them all). Every
``TrainingArguments`` flag applies (``--optim``, ``--max_steps``...). Writes ``results.json``/``results.md`` and the
adapter (``final/``) into ``--output_dir``; a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import sys
import time

from peft import get_peft_model

from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import LoraArguments, SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ARGUMENTS = (SingleTaskArguments, LoraArguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, lora: LoraArguments, training: ContinualTrainingArguments):
    technique, started = single_task.start_run(__file__, training, args, lora), time.time()
    # 1 records: the task's seeded train/test subsets
    task = single_task.load_task(args)
    # 2 template: the task's text, its virtual tokens removed
    template = task.spec.template.without_virtual_tokens()
    # 3 tokenize: answer-only labels
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, template)
    # 4 base model (quantized with --bits)
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: LoRA layers in the attention projections
    model = get_peft_model(base, lora.lora_config())
    trainable = single_task.trainable_parameters(model)
    # 6 train
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id, virtual_tokens=False,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    # 7 evaluate on the test records
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=False)
    # 8 save the adapter, write the results
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=trainable,
                              stored=trainable, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
