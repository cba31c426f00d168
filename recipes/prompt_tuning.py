"""Prompt tuning on one task, PEFT's own (``PromptTuningConfig``): free embedding rows in front of the text, started
from the embeddings of an init text (Lester et al., PEFT's TEXT init).

Run from the repository root, in the venv:

    python recipes/prompt_tuning.py --config recipes/configs/prompt_tuning/smollm2_135m.yaml

The reference implementation beside this library's method (``recipes/p_tuning.py``; its ``--encoder_type
embedding`` is prompt tuning at the template's virtual-token positions). PEFT puts all the virtual tokens in front
of the text (the task's template count), and its model is evaluated through ``PrependedPrompts`` (PEFT's own
forward, logits of the text only) by the same code as every technique. Writes ``results.json``/``results.md`` and
the adapter (``final/``) into ``--output_dir``; a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from peft import PromptTuningConfig, get_peft_model

from peft_continual.evaluation.prepended_prompts import PrependedPrompts
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume


@dataclass
class PromptTuningArguments:
    """Where the rows start."""

    init_text: str | None = field(
        default=None,
        metadata={"help": "Text whose token embeddings start the rows (repeated to fill them); None: the template's "
                  "init_text, else random rows."},
    )  # fmt: skip


ARGUMENTS = (SingleTaskArguments, PromptTuningArguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, tuning: PromptTuningArguments, training: ContinualTrainingArguments):
    technique, started = single_task.start_run(__file__, training, args, tuning), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template: PEFT reads the text; its rows go in front
    count = task.spec.template.total_virtual_tokens
    text = tuning.init_text or task.spec.template.init_text
    template = task.spec.template.without_virtual_tokens()
    # 3 tokenize
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, template)
    # 4 base model
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: `count` rows from the init text's embeddings
    config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=count,
        prompt_tuning_init="TEXT" if text else "RANDOM",
        prompt_tuning_init_text=text,
        tokenizer_name_or_path=tokenizer.name_or_path if text else None,
    )
    model = get_peft_model(base, config)
    rows = single_task.trainable_parameters(model)  # (count, D): all it trains, all it stores
    # 6 train (PEFT's forward prepends the rows)
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id, virtual_tokens=False,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    # 7 evaluate the text's logits with the rows in front
    result = single_task.evaluate(PrependedPrompts(model), prompts, task, args, virtual_tokens=False)
    # 8 save the rows, write the results
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=rows,
                              stored=rows, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
