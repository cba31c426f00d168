"""Write adapters as the first release of peft-continual saved them, for ``tests/regression/test_first_release.py``.

Run once, at the last commit before ``prompt_init`` existed (9f574af), from a checkout of that commit::

    python tests/regression/make_first_release_adapters.py tests/regression/first_release

It saves, for the tiny model of ``tests/tuners/continual_prompt/conftest.py``: an adapter in the middle of a round (LSTM encoder
after 3 SGD steps, tasks ``sentiment`` and ``topic``), the same adapter frozen into a prompt table, and a prompt-tuning
adapter with an ``init_text``; with each, the prompts and the logits the release computed on ``MIXED_ROWS``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.tuners.continual_prompt.conftest import MIXED_ROWS, make_batch, make_peft_model


def trained(model):
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**make_batch(MIXED_ROWS)).loss.backward()
        optimizer.step()
    return model.eval()


def save(model, folder: Path) -> None:
    model.save_pretrained(folder)
    with torch.no_grad():
        prompts = {f"prompt.{name}": rows.detach().clone() for name, rows in model.task_prompts().items()}
        logits = model(**make_batch(MIXED_ROWS)).logits
    save_file({**prompts, "logits": logits.contiguous()}, folder / "expected.safetensors")


def main(root: Path) -> None:
    import peft_continual

    print("peft_continual from", peft_continual.__file__)
    model = trained(make_peft_model(encoder_type="lstm", seed=3))
    save(model, root / "open_round")
    model.freeze_tasks()
    save(model, root / "frozen")
    embedding = trained(make_peft_model(encoder_type="embedding", init_text="topic or sentiment", seed=4,
                                        init_text_token_ids=[30, 31, 32]))  # fmt: skip
    save(embedding, root / "prompt_tuning")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
