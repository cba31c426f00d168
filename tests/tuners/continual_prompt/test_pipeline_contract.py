"""The data pipeline's batches drive the model unchanged: records -> tokens -> collated batch -> loss and generate.

The other prompting tests build batches by hand; this one pins the contract between the two sides with the real
SmolLM2 tokenizer and the pipeline's own ``PromptTokenizer`` and ``ContinualPromptCollator``.
"""

from __future__ import annotations

import torch
from peft import get_peft_model

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.tuners.continual_prompt import ContinualPromptConfig
from tests.tuners.continual_prompt.conftest import TEMPLATE_A, TEMPLATE_B, TEMPLATE_C

RECORDS = [
    TaskRecord("sentiment", {"sentence": "Profits rose 5%.", "label": "positive"}, "r0"),
    TaskRecord("topic", {"text": "The central bank cut rates.", "label": "economy"}, "r1"),
    TaskRecord("intent", {"utterance": "wake me up at seven"}, "r2"),
    TaskRecord("sentiment", {"sentence": "Shares fell.", "label": "negative"}, "r3"),
]


def test_pipeline_batches_train_and_generate(smollm2_tokenizer, tiny_llama):
    config = ContinualPromptConfig(templates=[TEMPLATE_A, TEMPLATE_B, TEMPLATE_C]).tokenize_tasknames(smollm2_tokenizer)
    model = get_peft_model(tiny_llama, config)
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [TEMPLATE_A, TEMPLATE_B, TEMPLATE_C])
    pad = smollm2_tokenizer.pad_token_id

    train_batch = ContinualPromptCollator(pad)([prompt_tokenizer(r) for r in RECORDS])
    model.train()
    loss = model(**train_batch).loss
    loss.backward()
    encoder = model.prompt_encoder
    assert torch.isfinite(loss) and encoder.head[-1].weight.grad.abs().sum() > 0  # the correction starts at zero
    assert all(rows.grad.abs().sum() > 0 for rows in encoder.start_rows.values())

    model.eval()
    generate_batch = ContinualPromptCollator(pad, padding_side="left")(
        [prompt_tokenizer(r, include_answer=False) for r in RECORDS]
    )
    generate_batch.pop("labels")
    out = model.generate(**generate_batch, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=pad)
    assert out.shape == (len(RECORDS), generate_batch["input_ids"].shape[1] + 3)
