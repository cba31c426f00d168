"""Prompting without training: zero-shot (``--k 0``) or few-shot (``k`` demonstrations from the training records
before each test input), as raw text or in the model's chat format (``--chat_template true``, with
``--system_prompt``): the baselines every trained technique must beat.

Run from the repository root, in the venv:

    python recipes/few_shot.py --config recipes/configs/few_shot/smollm2_135m.yaml
    python recipes/few_shot.py --config recipes/configs/few_shot/zero_shot.yaml
    python recipes/few_shot.py --config recipes/configs/few_shot/similar.yaml
    python recipes/few_shot.py --config recipes/configs/few_shot/zero_shot.yaml --chat_template true \
        --system_prompt "Answer with one word: positive, negative or neutral."

Demonstrations are chosen as the task file's ``fewshot:`` section says (per class by default, seeded), or per input
by sentence similarity (``--demonstrations similar``: the k nearest training records of each class, LM-BFF's choice,
``peft_continual.data.similar_demonstrations``); the model reads the task's template without its virtual tokens,
after them. Nothing trains: of ``TrainingArguments`` only
``--output_dir``, ``--seed`` and ``--precision`` apply, and training flags (``--learning_rate``, ``--max_steps``...) are
refused. Writes ``results.json``/``results.md`` into ``--output_dir``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

from peft_continual.data.chat import chat_template
from peft_continual.data.fewshot import fewshot_template
from peft_continual.data.similar_demonstrations import with_similar_demonstrations
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.errors import ConfigError
from peft_continual.experiments import single_task
from peft_continual.experiments.cli import run_recipe
from peft_continual.experiments.recipe_arguments import SingleTaskArguments
from peft_continual.training import ContinualTrainingArguments


@dataclass
class FewShotArguments:
    """How many demonstrations."""

    k: int | None = field(
        default=None,
        metadata={"help": "Demonstrations (per class, or in all, as the task file's fewshot section says); 0: "
                  "zero-shot; None: the task file's k."},
    )  # fmt: skip
    chat_template: bool = field(
        default=False,
        metadata={"help": "Put the prompt in the model's chat format (user turn; the answer is the assistant's)."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "With --chat_template: the system turn (None: the chat template's default)."}
    )
    demonstrations: str = field(
        default="random",
        metadata={"help": "`random` (seeded, the same for every input) or `similar` (per input, the k nearest "
                  "training records of each class by sentence similarity, LM-BFF's choice)."},
    )  # fmt: skip


ARGUMENTS = (SingleTaskArguments, FewShotArguments, ContinualTrainingArguments)
TRAINS = False


def main(args: SingleTaskArguments, fewshot: FewShotArguments, training: ContinualTrainingArguments):
    single_task.refuse_training_flags(training, "few-shot prompting")
    if fewshot.demonstrations not in ("random", "similar"):
        raise ConfigError(f"--demonstrations must be random or similar, got {fewshot.demonstrations!r}")
    if fewshot.system_prompt is not None and not fewshot.chat_template:
        raise ConfigError("--system_prompt needs --chat_template true (a system turn exists only in the chat format)")
    technique, started = single_task.start_run(__file__, training, args, fewshot), time.time()
    # 1 records: the demonstrations come from the training records
    task = single_task.load_task(args)
    # 2 template: k demonstrations, then the test input (its virtual tokens removed); similar ones travel in each
    # test record
    settings = task.spec.fewshot if fewshot.k is None else replace(task.spec.fewshot, k=fewshot.k)
    template = task.spec.template.without_virtual_tokens()
    if settings.k and fewshot.demonstrations == "similar":
        template, test = with_similar_demonstrations(task.spec.template, task.train, task.test, settings)
        task = replace(task, test=test)
    elif settings.k:
        template = fewshot_template(task.spec.template, task.train, settings)
    if fewshot.chat_template:  # the demonstrations and the input as the user's turn
        template = chat_template(template, single_task.load_tokenizer(args), fewshot.system_prompt)
    # 3 the tokenizer of the prompts (nothing to train: no training examples)
    prompts = PromptTokenizer(single_task.load_tokenizer(args), [template], max_length=args.max_length)
    # 4 base model, 5 nothing to wrap, 6 nothing to train
    model, base = single_task.load_model(args, training)
    # 7 evaluate
    result = single_task.evaluate(model, prompts, task, args, virtual_tokens=False)
    # 8 write the results (nothing is stored beside the base model)
    return single_task.finish(technique, result, training, args, trained=None, trainable=0, stored=0, base=base,
                              started=started)  # fmt: skip


if __name__ == "__main__":
    run_recipe(main, ARGUMENTS, sys.argv[1:])
