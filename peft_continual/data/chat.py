"""A task template in the model's chat format: the prompt as the user's turn, the answer as the assistant's reply.

Instruction-tuned models (SmolLM2-Instruct among them) were trained on chat-formatted text; prompted with raw text
they see something else than in training. ``chat_template`` renders the model's own chat template (the tokenizer's
``apply_chat_template``, with an optional system prompt, else the template's default one) around the task's text, so
zero/few-shot prompting and every trained technique can read the task the way the model was tuned to read
instructions. The answer slot stays last, so labels, generation and restricted scoring work unchanged.
"""

from __future__ import annotations

from typing import Any

from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError, TemplateError

_USER_MARK = "\x00user\x00"


def chat_template(template: TaskTemplate, tokenizer: Any, system_prompt: str | None = None) -> TaskTemplate:
    """``template``'s text (virtual tokens removed) as one user turn of the tokenizer's chat template, followed by the
    assistant's turn that holds the answer slot.

    Args:
        template: A task template whose answer field ends it.
        tokenizer: A tokenizer with a chat template.
        system_prompt: The system turn; ``None``: whatever the chat template puts there by default (SmolLM2's names
            the assistant; others have none).

    Raises:
        ConfigError: the tokenizer has no chat template.
        TemplateError: the template has no answer field.

    """
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')!r} has no chat template")
    if template.answer_field is None:
        raise TemplateError(f"task {template.taskname!r}: a chat prompt needs an answer_field (the assistant's reply)")
    text = template.without_virtual_tokens().prompt_template
    answer = "{" + template.answer_field + "}"
    user = text[: -len(answer)].rstrip()
    messages = [{"role": "user", "content": _USER_MARK}]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    before, after = rendered.split(_USER_MARK)
    prompt = _literal(before) + user + _literal(after) + answer
    return TaskTemplate(**{**template.without_virtual_tokens().to_dict(), "prompt_template": prompt})


def _literal(text: str) -> str:
    """Chat markup as template text: braces escaped, so they are not read as slots."""
    return text.replace("{", "{{").replace("}", "}}")
