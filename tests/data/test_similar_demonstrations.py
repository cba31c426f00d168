"""Demonstrations chosen per input by similarity: the nearest training records of each class, rendered into a field
that the task's plain template reads first."""

import pytest
import torch

from peft_continual.data.fewshot import FewShotConfig
from peft_continual.data.records import TaskRecord
from peft_continual.data.similar_demonstrations import (
    DEMONSTRATIONS_FIELD,
    nearest_per_class,
    with_similar_demonstrations,
)
from peft_continual.data.templates import TaskTemplate
from peft_continual.errors import ConfigError

TEMPLATE = TaskTemplate("s", "<|VIRTUAL_PROMPT_0|>{sentence}\nSentiment: {label}", 2, [2], "label")
WORDS = ["profit", "loss", "rain", "sun"]


def embed(texts):
    """A hand-made embedding: how often each of four words occurs."""
    return torch.tensor([[float(text.split().count(word)) for word in WORDS] for text in texts])


TRAIN = [
    TaskRecord("s", {"sentence": "profit profit", "label": "positive"}, "t0"),
    TaskRecord("s", {"sentence": "sun sun", "label": "positive"}, "t1"),
    TaskRecord("s", {"sentence": "loss loss", "label": "negative"}, "t2"),
    TaskRecord("s", {"sentence": "rain", "label": "negative"}, "t3"),
]


def test_each_class_gives_its_nearest_records_the_nearest_last():
    candidates = embed([record.fields["sentence"] for record in TRAIN])
    classes = [record.fields["label"] for record in TRAIN]
    assert nearest_per_class(embed(["profit rain"])[0], candidates, classes, k=1) in ([0, 3], [3, 0])
    assert nearest_per_class(embed(["profit profit loss"])[0], candidates, classes, k=1) == [2, 0]
    assert nearest_per_class(embed(["sun"])[0], candidates, classes, k=2)[-1] == 1  # the closest stands last


def test_every_query_gets_its_own_demonstrations_in_the_template_slot():
    queries = [TaskRecord("s", {"sentence": "sun and rain", "label": "positive"}, "q0"),
               TaskRecord("s", {"sentence": "profit and loss loss", "label": "negative"}, "q1")]  # fmt: skip
    template, records = with_similar_demonstrations(TEMPLATE, TRAIN, queries, FewShotConfig(k=1), embed=embed)
    assert template.prompt_template == "{demonstrations}{sentence}\nSentiment: {label}"
    assert template.total_virtual_tokens == 0
    assert records[0].fields[DEMONSTRATIONS_FIELD] in (
        "sun sun\nSentiment: positive\n\nrain\nSentiment: negative\n\n",
        "rain\nSentiment: negative\n\nsun sun\nSentiment: positive\n\n",
    )
    assert records[1].fields[DEMONSTRATIONS_FIELD] == (
        "profit profit\nSentiment: positive\n\nloss loss\nSentiment: negative\n\n"
    )
    assert records[1].fields["sentence"] == "profit and loss loss" and queries[1].fields.keys() == {"sentence", "label"}


def test_total_sampling_is_refused():
    with pytest.raises(ConfigError, match="per class"):
        with_similar_demonstrations(TEMPLATE, TRAIN, TRAIN, FewShotConfig(k=1, sampling="total"), embed=embed)
