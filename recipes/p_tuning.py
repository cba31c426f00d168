"""P-tuning on one task with this library's method: a task-conditioned encoder writes the virtual tokens where the
template puts them, starting from the embeddings of an init text; after training they are frozen into the table.

Run from the repository root, in the venv:

    python recipes/p_tuning.py --config recipes/configs/p_tuning/smollm2_135m.yaml
    python recipes/p_tuning.py --config recipes/configs/p_tuning/prompt_tuning.yaml   # free rows (encoder_type: embedding)

One task, one round: the continual workflow (tasks added later, old rows bit-identical) is
``recipes/continual_p_tuning.py``. ``--start_rows_learning_rate`` gives the text rows the prompts start from their own
rate. Evaluated by the same code as every technique (``recipes/compare_techniques.py``). Writes
``results.json``/``results.md`` and the prompt table (``final/``) into ``--output_dir``.
"""

from __future__ import annotations

import sys
import time

from peft import get_peft_model

from peft_continual import ContinualPromptConfig
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import EncoderArguments, SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ARGUMENTS = (SingleTaskArguments, EncoderArguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, encoder: EncoderArguments, training: ContinualTrainingArguments):
    technique, started = single_task.start_run(__file__, training, args, encoder), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template: with its virtual-token markers
    template = task.spec.template
    # 3 tokenize: virtual-token positions and answer-only labels
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, template)
    # 4 base model
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: the encoder of this round (the prompt table is empty)
    config = ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[template],
        encoder_type=encoder.encoder_type,
        encoder_hidden_size=encoder.encoder_hidden_size,
        prompt_depth=encoder.prompt_depth,
        first_trained_layer=encoder.first_trained_layer,
        init_text=encoder.init_text,
    )
    model = get_peft_model(base, config.tokenize_tasknames(tokenizer))
    trainable = single_task.trainable_parameters(model)
    # 6 train the encoder, then freeze its output into the table (what is served and saved)
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    model.freeze_tasks()
    # 7 evaluate from the table
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=True)
    # 8 save the table, write the results
    stored = model.prompt_table.counts()[task.name] * model.prompt_table.token_dim
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=trainable,
                              stored=stored, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
