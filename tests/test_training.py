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
from peft_continual.training import ContinualTrainingArguments, build_trainer, train_or_resume
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

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


@pytest.mark.parametrize("sampling", ["random", "group_by_length", "group_by_length_per_task"])
@pytest.mark.integration
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


def test_batches_grouped_by_length_per_task_keep_both_tasks(tiny_llama, smollm2_tokenizer, tmp_path):
    rows = examples(smollm2_tokenizer, count=16)  # 16 sentiment rows, 16 intent rows of other lengths
    data = rows + [replace(e, input_ids=e.input_ids * 4, labels=e.labels * 4) for e in rows]  # and 32 four times longer
    model = peft_model(tiny_llama, smollm2_tokenizer)
    args = arguments(tmp_path, train_sampling_strategy="group_by_length_per_task", per_device_train_batch_size=4)
    batches = list(build_trainer(model, args, data, 0).get_train_dataloader())
    assert len(batches) == 16
    assert all(batch["tasknames"].count("sentiment") == 2 for batch in batches)  # the 50/50 mix in every batch
    padding = sum((batch["attention_mask"] == 0).sum().item() for batch in batches)
    # rows of one task and one length quantile share a batch: the long and the short ones rarely meet
    random_order = list(build_trainer(model, arguments(tmp_path / "r", per_device_train_batch_size=4), data, 0)
                        .get_train_dataloader())  # fmt: skip
    assert padding < 0.5 * sum((batch["attention_mask"] == 0).sum().item() for batch in random_order)


@pytest.mark.integration
def test_best_checkpoint_by_validation_accuracy(make_tiny_model, smollm2_tokenizer, tmp_path):
    """``metric_for_best_model="task_accuracy"``: every evaluation logs the per-task scores, the checkpoint kept as
    best is the one with the highest mean, and the model loaded at the end scores exactly that again."""
    from peft_continual.evaluation import TaskEvaluation, ValidationAccuracy

    rows = [
        {"taskname": "sentiment", "sentence": f"Sales {w} {i}%", "label": label}
        for i in range(6)
        for w, label in [("rose", "positive"), ("fell", "negative")]
    ]
    records = records_from_dicts(rows)
    prompts = PromptTokenizer(smollm2_tokenizer, TEMPLATES[:1])
    tasks = [TaskEvaluation("sentiment", labels={"labels": ["positive", "negative"]})]
    held_out = [r for r in records if r.fields["label"] == "positive"][:3] + [records[1]]  # 3 positive, 1 negative
    accuracy = ValidationAccuracy(prompts, held_out, tasks)  # a model that always answers one label: 75% or 25%
    torch.manual_seed(0)
    config = ContinualPromptConfig(templates=TEMPLATES[:1], encoder_type="mlp").tokenize_tasknames(smollm2_tokenizer)
    model = get_peft_model(make_tiny_model(initializer_range=0.5), config)  # answers that depend on the prompt
    args = arguments(
        tmp_path,
        max_steps=8,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="task_accuracy",
    )
    examples = prompts.tokenize_records(records).examples
    trainer = build_trainer(
        model, args, examples, smollm2_tokenizer.pad_token_id, eval_dataset=examples[:8], validation_accuracy=accuracy
    )
    trainer.train()

    scores = [(e["step"], e["eval_task_accuracy"]) for e in trainer.state.log_history if "eval_loss" in e]
    assert [step for step, _ in scores] == list(range(1, 9))
    assert all(
        e["eval_sentiment_accuracy"] == e["eval_task_accuracy"] for e in trainer.state.log_history if "eval_loss" in e
    )
    assert len({score for _, score in scores}) > 1  # the choice is not a tie
    best_step, best = max(scores, key=lambda item: item[1])  # the first of equal maxima, as Trainer keeps it
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    assert accuracy(model)["eval_task_accuracy"] == best == trainer.state.best_metric


def test_validation_accuracy_needs_an_eval_dataset(tiny_llama, smollm2_tokenizer, tmp_path):
    from peft_continual.errors import ConfigError
    from peft_continual.evaluation import TaskEvaluation, ValidationAccuracy

    prompts = PromptTokenizer(smollm2_tokenizer, TEMPLATES[:1])
    records = records_from_dicts([{"taskname": "sentiment", "sentence": "Up", "label": "positive"}])
    accuracy = ValidationAccuracy(prompts, records, [TaskEvaluation("sentiment", labels={"labels": ["positive"]})])
    model = peft_model(tiny_llama, smollm2_tokenizer)
    with pytest.raises(ConfigError, match="needs an eval_dataset"):
        build_trainer(model, arguments(tmp_path), examples(smollm2_tokenizer), 2, validation_accuracy=accuracy)
