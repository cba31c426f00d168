"""P-tuning and LoRA together on one task: this library's prompts and PEFT's LoRA in one ``PeftModel``
(``ContinualPromptConfig(stacked_adapters=LoraConfig(...))``), trained jointly at their own learning rates.

Run from the repository root, in the venv:

    python recipes/p_tuning_lora.py --config recipes/configs/p_tuning_lora/smollm2_135m.yaml

The encoder trains at ``--learning_rate``, LoRA at ``--stacked_learning_rate`` (``param_groups``). After training,
the prompts are frozen into the table; one ``save_pretrained`` writes table and LoRA weights. Evaluated by the same
code as every technique (``recipes/compare_techniques.py``).
"""

from __future__ import annotations

import sys
import time

from peft import get_peft_model

from peft_continual import ContinualPromptConfig
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import EncoderArguments, LoraArguments, SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

ARGUMENTS = (SingleTaskArguments, EncoderArguments, LoraArguments, ContinualTrainingArguments)
TRAINS = True


def main(
    args: SingleTaskArguments, encoder: EncoderArguments, lora: LoraArguments, training: ContinualTrainingArguments
):
    technique, started = single_task.start_run(__file__, training, args, encoder, lora), time.time()
    # 1 records
    task = single_task.load_task(args)
    # 2 template with its virtual tokens; 3 tokenize
    tokenizer, prompts, examples = single_task.tokenize_task(args, task, task.spec.template)
    # 4 base model
    base, base_parameters = single_task.load_model(args, training)
    # 5 wrap: prompts with LoRA stacked under them, one PeftModel
    config = ContinualPromptConfig(
        task_type="CAUSAL_LM",
        templates=[task.spec.template],
        stacked_adapters=lora.lora_config(),
        encoder_type=encoder.encoder_type,
        encoder_hidden_size=encoder.encoder_hidden_size,
        prompt_depth=encoder.prompt_depth,
        first_trained_layer=encoder.first_trained_layer,
        init_text=encoder.init_text,
    )
    model = get_peft_model(base, config.tokenize_tasknames(tokenizer))
    trainable = single_task.trainable_parameters(model)
    lora_weights = sum(p.numel() for p in model.stacked_parameters())
    # 6 train both (their own rates), then freeze the prompts into the table
    trainer = build_trainer(model, training, examples, tokenizer.pad_token_id,
                            **single_task.validation(prompts, task, args))  # fmt: skip
    train_or_resume(trainer)
    model.freeze_tasks()
    # 7 evaluate: table + LoRA
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=True)
    # 8 save table and LoRA in one file, write the results
    stored = model.prompt_table.counts()[task.name] * model.prompt_table.token_dim + lora_weights
    return single_task.finish(technique, result, training, args, trained=(model, tokenizer), trainable=trainable,
                              stored=stored, base=base_parameters, started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
