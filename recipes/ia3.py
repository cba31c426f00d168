"""IA3 on one task (PEFT's ``IA3Config``): learned scales of the keys, values and feed-forward activations.

Run from the repository root, in the venv:

    python recipes/ia3.py --config recipes/configs/ia3/smollm2_135m.yaml

Like every technique of the comparison (``recipes/compare_techniques.py``): the model reads the task's template
without its virtual tokens, is evaluated by the same code, takes every ``TrainingArguments`` flag, writes
``results.json``/``results.md`` and the adapter (``final/``) into ``--output_dir``, and resumes a killed run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from peft import IA3Config, get_peft_model

from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume


@dataclass
class IA3Arguments:
    """Where IA3 puts its scaling vectors."""

    ia3_target_modules: list[str] = field(
        default_factory=lambda: ["k_proj", "v_proj", "down_proj"], metadata={"help": "Layers whose output IA3 scales."}
    )
    ia3_feedforward_modules: list[str] = field(
        default_factory=lambda: ["down_proj"], metadata={"help": "Of those, the ones whose input IA3 scales."}
    )


ARGUMENTS = (SingleTaskArguments, IA3Arguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, ia3: IA3Arguments, training: ContinualTrainingArguments):
    technique, started = single_task.start_run(__file__, training, args, ia3), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template: text only (IA3 reads what LoRA reads); 3 tokenize
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, task.spec.template.without_virtual_tokens())
    # 4 base model
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: one scaling vector per target layer
    config = IA3Config(
        task_type="CAUSAL_LM", target_modules=ia3.ia3_target_modules, feedforward_modules=ia3.ia3_feedforward_modules
    )
    model = get_peft_model(base, config)
    vectors = single_task.trainable_parameters(model)  # one scale per channel of each target layer
    # 6 train
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id, virtual_tokens=False,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    # 7 evaluate
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=False)
    # 8 save the vectors, write the results
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=vectors,
                              stored=vectors, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
