"""P-tuning on one task, PEFT's own (``PromptEncoderConfig``): an LSTM (or MLP) encoder turns free input rows into
the virtual tokens in front of the text (Liu et al., GPT understands too).

Run from the repository root, in the venv:

    python recipes/peft_p_tuning.py --config recipes/configs/peft_p_tuning/smollm2_135m.yaml

The reference implementation beside this library's method (``recipes/p_tuning.py``: task-conditioned, started
from text, virtual tokens where the template puts them, frozen into a table). PEFT's encoder starts from random rows;
its virtual tokens go in front of the text (the task's template count). Evaluated through ``PrependedPrompts`` by
the same code as every technique. Writes ``results.json``/``results.md`` and the adapter (``final/``: PEFT saves
the encoder's output rows) into ``--output_dir``.
"""

from __future__ import annotations

import sys
import time

from peft import PromptEncoderConfig, get_peft_model

from peft_continual.errors import ConfigError
from peft_continual.evaluation.prepended_prompts import PrependedPrompts
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import EncoderArguments, SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume
from peft_continual.tuners.continual_prompt.config import default_encoder_hidden_size

ARGUMENTS = (SingleTaskArguments, EncoderArguments, ContinualTrainingArguments)
TRAINS = True


def main(args: SingleTaskArguments, encoder: EncoderArguments, training: ContinualTrainingArguments):
    if encoder.encoder_type not in ("lstm", "mlp"):
        raise ConfigError(f"PEFT's P_TUNING has an `lstm` or `mlp` encoder, not {encoder.encoder_type!r}")
    if encoder.prompt_depth != 1 or encoder.first_trained_layer != 0:
        raise ConfigError(
            "--prompt_depth, --first_trained_layer: PEFT's P_TUNING places its tokens at the input only (ours: "
            "recipes/p_tuning.py)"
        )
    if encoder.init_text is not None:
        raise ConfigError("--init_text: PEFT's P_TUNING starts from random rows (recipes/prompt_tuning.py takes one)")
    technique, started = single_task.start_run(__file__, training, args, encoder), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template: the text; PEFT's encoder output goes in front
    count = task.spec.template.total_virtual_tokens
    template = task.spec.template.without_virtual_tokens()
    # 3 tokenize
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, template)
    # 4 base model
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: PEFT's encoder, as wide as ours
    width = encoder.encoder_hidden_size or default_encoder_hidden_size(base.config.hidden_size)
    config = PromptEncoderConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=count,
        encoder_reparameterization_type=encoder.encoder_type.upper(),
        encoder_hidden_size=width,
    )
    model = get_peft_model(base, config)
    trainable = single_task.trainable_parameters(model)
    # 6 train
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id, virtual_tokens=False,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    # 7 evaluate with the encoder's rows in front
    result = single_task.evaluate(PrependedPrompts(model), prompts, task, args, virtual_tokens=False)
    # 8 save, write the results (what PEFT stores: the encoder's output rows)
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=trainable,
                              stored=count * model.active_peft_config.token_dim, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
