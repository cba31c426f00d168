"""Training through ``Trainer``: argument defaults, best-checkpoint loading, resume after a crash."""

from dataclasses import replace

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from transformers import HfArgumentParser, TrainerCallback

from peft_continual.data.records import records_from_dicts
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.prompting import ContinualPromptConfig
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume

TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("intent", "{utterance}<|VIRTUAL_PROMPT_0|>\n{label}", 3, [3], "label"),
]


def examples(tokenizer, count=8):
    rows = [{"taskname": "sentiment", "sentence": f"Sales rose {i}%", "label": "positive"} for i in range(count)]
    rows += [{"taskname": "intent", "utterance": f"wake me at {i}", "label": "alarm_set"} for i in range(count)]
    return PromptTokenizer(tokenizer, TEMPLATES).tokenize_records(records_from_dicts(rows)).examples


def peft_model(tiny_llama, tokenizer, seed=0):
    torch.manual_seed(seed)  # the encoder's initialisation
    config = ContinualPromptConfig(templates=TEMPLATES, encoder_type="mlp").tokenize_tasknames(tokenizer)
    return get_peft_model(tiny_llama, config)


def arguments(output_dir, **overrides):
    settings = {"output_dir": str(output_dir), "per_device_train_batch_size": 4, "learning_rate": 1e-2}
    settings |= {"max_steps": 6, "use_cpu": True, "seed": 0, "disable_tqdm": True, "logging_steps": 1}
    return ContinualTrainingArguments(**(settings | overrides))


def test_defaults_suit_the_method_and_parse_from_yaml(tmp_path):
    (tmp_path / "args.yaml").write_text("output_dir: out\nlearning_rate: 0.0005\nmax_steps: 3\n")
    (args,) = HfArgumentParser(ContinualTrainingArguments).parse_yaml_file(tmp_path / "args.yaml")
    assert (args.remove_unused_columns, args.label_names, args.learning_rate) == (False, ["labels"], 5e-4)
    assert args.warmup_steps == 0.06


class EarliestIsBest(TrainerCallback):
    """Adds ``eval_earliness`` (higher for earlier evaluations), so the best checkpoint is the first, not the last."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_earliness"] = -state.global_step


def test_best_checkpoint_is_loaded_at_the_end(tiny_llama, smollm2_tokenizer, tmp_path):
    model = peft_model(tiny_llama, smollm2_tokenizer)
    args = arguments(
        tmp_path,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        save_total_limit=None,
        load_best_model_at_end=True,
        metric_for_best_model="earliness",
        greater_is_better=True,
    )
    data = examples(smollm2_tokenizer)
    pad = smollm2_tokenizer.pad_token_id
    trainer = build_trainer(model, args, data, pad, eval_dataset=data[:4], callbacks=[EarliestIsBest()])
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    saved = load_file(f"{trainer.state.best_model_checkpoint}/adapter_model.safetensors")
    current = {k: v for k, v in model.state_dict().items() if "continual_prompt_encoder" in k}
    assert saved and len(saved) == len(current)
    for key, value in current.items():
        matching = [v for k, v in saved.items() if key.endswith(k.split("continual_prompt_encoder.", 1)[1])]
        assert len(matching) == 1 and torch.equal(matching[0], value), key


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_a_rerun_resumes_from_the_last_checkpoint_and_ends_like_an_uninterrupted_run(
    tiny_llama, smollm2_tokenizer, tmp_path, sampling
):
    data = examples(smollm2_tokenizer)
    pad = smollm2_tokenizer.pad_token_id
    settings = {"save_steps": 2, "train_sampling_strategy": sampling}
    straight = peft_model(tiny_llama, smollm2_tokenizer)
    train_or_resume(build_trainer(straight, arguments(tmp_path / "straight", **settings), data, pad))
    straight.freeze_tasks()

    crashing = peft_model(tiny_llama, smollm2_tokenizer)
    with pytest.raises(KeyboardInterrupt):
        build_trainer(crashing, arguments(tmp_path / "run", **settings), data, pad, callbacks=[CrashAt(3)]).train()
    rerun = peft_model(tiny_llama, smollm2_tokenizer, seed=1)  # other initial weights: the checkpoint must win
    trainer = build_trainer(rerun, arguments(tmp_path / "run", **settings), data, pad)
    train_or_resume(trainer)
    assert trainer.state.global_step == 6
    rerun.freeze_tasks()
    assert rerun.prompt_table.row_hashes() == straight.prompt_table.row_hashes()


def test_length_grouped_batches_hold_rows_of_similar_length(tiny_llama, smollm2_tokenizer, tmp_path):
    short = examples(smollm2_tokenizer, count=16)  # 32 rows of 12-15 tokens
    data = short + [replace(e, input_ids=e.input_ids * 4, labels=e.labels * 4) for e in short]  # and 32 of 48-60
    model = peft_model(tiny_llama, smollm2_tokenizer)
    args = arguments(tmp_path, train_sampling_strategy="group_by_length", per_device_train_batch_size=2)
    batches = list(build_trainer(model, args, data, 0).get_train_dataloader())
    mixed = sum(len({n > 30 for n in batch["attention_mask"].sum(1).tolist()}) == 2 for batch in batches)
    # Trainer sorts mega-batches of 8 batches by length: at most one mixed batch in each of the 4 (random: ~16 of 32)
    assert len(batches) == 32 and mixed <= 5
