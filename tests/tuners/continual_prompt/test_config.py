"""``ContinualPromptConfig``: typed fields, validation with our errors, JSON round trip, task-name token ids."""

from __future__ import annotations

import json

import pytest
from transformers import HfArgumentParser

from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError, DuplicateTaskError, TemplateError
from peft_continual.tuners.continual_prompt import PEFT_TYPE, ContinualPromptConfig, EncoderType
from tests.conftest import SMOLLM2_TOKENIZER_DIR
from tests.tuners.continual_prompt.conftest import TEMPLATE_A, TEMPLATE_B, TEMPLATE_C


def test_defaults_and_normalisation():
    config = ContinualPromptConfig(templates=[TEMPLATE_A, TEMPLATE_B.to_dict()])
    assert config.peft_type is PEFT_TYPE and config.task_type == "CAUSAL_LM"
    assert config.encoder_type is EncoderType.LSTM and config.encoder_num_layers == 2
    assert config.templates == [TEMPLATE_A.to_dict(), TEMPLATE_B.to_dict()]
    assert config.task_templates() == [TEMPLATE_A, TEMPLATE_B]
    assert config.training_tasks == ["sentiment", "topic"] and config.frozen_tasks == {}
    assert config.token_counts() == {"sentiment": 4, "topic": 5}
    assert not config.is_prompt_learning, "PEFT's prompt-learning path would refuse is_trainable=True on load"


def test_json_round_trip_keeps_every_field(tmp_path):
    config = ContinualPromptConfig(
        templates=[TEMPLATE_A, TEMPLATE_B, TEMPLATE_C],
        encoder_type="mlp",
        encoder_hidden_size=16,
        encoder_num_layers=3,
        encoder_dropout=0.1,
        taskname_token_ids={"topic": [5, 6]},
        frozen_tasks={"sentiment": 4},
        training_tasks=["topic", "intent"],
        base_model_fingerprint={"hidden_size": 32, "vocab_size": 512, "embedding_sha256": "ab", "name_or_path": None},
        token_dim=32,
    )
    config.save_pretrained(tmp_path)
    json.loads((tmp_path / "adapter_config.json").read_text())  # plain JSON, no pickled objects
    loaded = ContinualPromptConfig.from_pretrained(tmp_path)
    assert type(loaded) is ContinualPromptConfig
    assert loaded.to_dict() == config.to_dict()


def test_hf_argument_parser_builds_a_cli():
    (config,) = HfArgumentParser(ContinualPromptConfig).parse_args_into_dataclasses(
        ["--encoder_type", "embedding", "--encoder_hidden_size", "64", "--init_text", "Classify"]
    )
    assert config.encoder_type is EncoderType.EMBEDDING and config.encoder_hidden_size == 64


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"templates": [TEMPLATE_A, TEMPLATE_A]}, DuplicateTaskError, "'sentiment' has more than one template"),
        ({"templates": [{"taskname": "x"}]}, TemplateError, r"templates\[0\].*missing template key"),
        ({"templates": ["text"]}, TemplateError, r"templates\[0\] must be a TaskTemplate or a dict"),
        ({"encoder_type": "gru"}, ConfigError, "encoder_type='gru' is not one of 'embedding', 'lstm', 'mlp'"),
        ({"encoder_hidden_size": 0}, ConfigError, "encoder_hidden_size must be a positive integer"),
        ({"encoder_num_layers": 1.5}, ConfigError, "encoder_num_layers must be a positive integer"),
        ({"encoder_dropout": 1.0}, ConfigError, r"encoder_dropout must be in \[0, 1\)"),
        ({"init_text": "  "}, ConfigError, "init_text must be a non-empty string or None"),
        ({"prompt_init": "zeros"}, ConfigError, "prompt_init='zeros' is not one of 'random', 'text'"),
        ({"task_type": "SEQ_CLS"}, ConfigError, "task_type='SEQ_CLS' is not supported"),
        ({"frozen_tasks": {"other": 4}}, ConfigError, "frozen task 'other' has no template"),
        ({"frozen_tasks": {"sentiment": 3}}, ConfigError, "'sentiment' has 3 rows.*total_virtual_tokens=4"),
        ({"frozen_tasks": {"sentiment": 4}, "training_tasks": ["sentiment", "topic"]}, DuplicateTaskError, "both"),
        ({"training_tasks": ["sentiment"]}, ConfigError, r"templates not listed \['topic'\]"),
        ({"training_tasks": ["sentiment", "topic", "x"]}, ConfigError, r"without a template \['x'\]"),
        ({"training_tasks": ["topic", "topic", "sentiment"]}, DuplicateTaskError, "names a task twice"),
    ],
)
def test_invalid_configs_raise_our_errors(kwargs, error, message):
    kwargs.setdefault("templates", [TEMPLATE_A, TEMPLATE_B])
    with pytest.raises(error, match=message):
        ContinualPromptConfig(**kwargs)


def test_template_without_virtual_tokens_is_refused():
    plain = TEMPLATE_A.without_virtual_tokens()
    with pytest.raises(ConfigError, match=r"\['sentiment'\] have total_virtual_tokens=0"):
        ContinualPromptConfig(templates=[plain])


def test_tokenize_tasknames_with_the_base_tokenizer(smollm2_tokenizer):
    config = ContinualPromptConfig(templates=[TEMPLATE_A, TEMPLATE_B], taskname_token_ids={"topic": [7]})
    assert config.missing_token_ids() == ["sentiment"]
    config.tokenize_tasknames(smollm2_tokenizer)
    assert config.taskname_token_ids == {
        "topic": [7],  # ids already present are kept: a resumed round must see the same conditioning
        "sentiment": smollm2_tokenizer("sentiment", add_special_tokens=False)["input_ids"],
    }
    assert config.missing_token_ids() == []


def test_resolve_token_ids_loads_the_tokenizer_only_when_needed():
    config = ContinualPromptConfig(templates=[TEMPLATE_A], tokenizer_name_or_path=str(SMOLLM2_TOKENIZER_DIR))
    config.resolve_token_ids(base_model_name_or_path=None)
    assert config.taskname_token_ids["sentiment"]
    assert config.init_token_ids["sentiment"] == config.taskname_token_ids["sentiment"]  # its init text is its name
    embedding = ContinualPromptConfig(templates=[TEMPLATE_A], encoder_type="embedding", init_text="Classify it")
    embedding.resolve_token_ids(base_model_name_or_path=str(SMOLLM2_TOKENIZER_DIR))
    assert embedding.init_token_ids["sentiment"] and embedding.taskname_token_ids == {}
    random = ContinualPromptConfig(templates=[TEMPLATE_A], encoder_type="embedding", prompt_init="random")
    random.resolve_token_ids(None)  # nothing needed


def test_each_task_starts_from_its_template_init_text_else_the_configs_else_its_name(smollm2_tokenizer):
    own = TaskTemplate.from_dict({**TEMPLATE_A.to_dict(), "init_text": "Is this news good or bad?"})
    config = ContinualPromptConfig(templates=[own, TEMPLATE_B], init_text="Classify the topic")
    config.tokenize_tasknames(smollm2_tokenizer)
    ids = lambda text: smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert config.init_token_ids == {"sentiment": ids("Is this news good or bad?"), "topic": ids("Classify the topic")}
    plain = ContinualPromptConfig(templates=[TEMPLATE_B]).tokenize_tasknames(smollm2_tokenizer)
    assert plain.init_token_ids == {"topic": ids("topic")} and plain.init_text_of("topic") == "topic"


def test_a_config_saved_before_prompt_init_existed_keeps_its_behaviour(tmp_path):
    """``adapter_config.json`` of the first release: no ``prompt_init``, prompt tuning's ids in ``init_text_token_ids``."""
    for encoder_type, init_text, expected in [("lstm", None, "random"), ("embedding", "Classify it", "text")]:
        config = ContinualPromptConfig(templates=[TEMPLATE_A], encoder_type=encoder_type, init_text=init_text)
        saved = config.to_dict() | {"peft_type": "CONTINUAL_PROMPT", "init_text_token_ids": [5, 6]}
        del saved["prompt_init"], saved["init_token_ids"]
        (tmp_path / "adapter_config.json").write_text(json.dumps(saved, default=str))
        loaded = ContinualPromptConfig.from_pretrained(tmp_path)
        assert loaded.prompt_init.value == expected
        assert loaded.init_token_ids == {"sentiment": [5, 6]}


@pytest.mark.parametrize(
    ("path", "message"), [(None, "has no name_or_path"), ("/nonexistent/tok", "no tokenizer loads")]
)
def test_missing_token_ids_without_a_tokenizer_explain_what_to_do(path, message):
    config = ContinualPromptConfig(templates=[TEMPLATE_A])
    with pytest.raises(ConfigError, match=rf"\['sentiment'\].*{message}.*tokenize_tasknames"):
        config.resolve_token_ids(base_model_name_or_path=path)


@pytest.mark.parametrize(("width", "resolved"), [(32, 32), (320, 256)])
def test_default_encoder_width_is_the_model_width_capped_at_256(width, resolved):
    from peft import get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=width, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids={TEMPLATE_A.taskname: [5]})
    model = get_peft_model(base, config)
    assert model.peft_config["default"].encoder_hidden_size == resolved
    assert model.prompt_encoder.lstm.hidden_size == resolved
