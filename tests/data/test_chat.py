"""The chat format of a task template: the model's own chat markup around the task's text, the answer last."""

import pytest
from transformers import AutoTokenizer

from peft_continual.data.chat import chat_template
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError, TemplateError
from tests.conftest import SMOLLM2_TOKENIZER_DIR

TEMPLATE = TaskTemplate(
    "sentiment", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", 4, [4], "label", truncate_field="sentence"
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)


def test_the_prompt_is_the_users_turn_and_the_answer_the_assistants(tokenizer):
    chat = chat_template(TEMPLATE, tokenizer, system_prompt="Answer with one word.")
    record = TaskRecord("sentiment", {"sentence": "Profit {rose}.", "label": "positive"}, "test:1")
    messages = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Profit {rose}.\nSentiment:"},
    ]
    expected_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    example = PromptTokenizer(tokenizer, [chat]).tokenize_records([record]).examples[0]
    prompt_ids = [token for token, label in zip(example.input_ids, example.labels, strict=True) if label == -100]
    assert tokenizer.decode(prompt_ids) == expected_prompt  # the model's own chat markup, braces of the text kept
    assert tokenizer.decode([t for t in example.labels if t != -100]).strip() == "positive" + tokenizer.eos_token
    assert chat.total_virtual_tokens == 0 and chat.answer_field == "label" and chat.truncate_field == "sentence"


def test_without_a_system_prompt_the_chat_templates_default_stays(tokenizer):
    assert "You are a helpful AI assistant named SmolLM" in chat_template(TEMPLATE, tokenizer).prompt_template


def test_a_tokenizer_without_a_chat_template_or_a_template_without_an_answer_is_refused(tokenizer):
    plain = AutoTokenizer.from_pretrained(SMOLLM2_TOKENIZER_DIR)
    plain.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template"):
        chat_template(TEMPLATE, plain)
    with pytest.raises(TemplateError, match="needs an answer_field"):
        chat_template(TaskTemplate("t", "{sentence}", 0, []), tokenizer)
