"""Label words (LM-BFF): the model reads and writes a word per label; metrics are over the labels."""

import pytest

from peft_continual.errors import ConfigError
from peft_continual.evaluation import LabelNormalization, TaskEvaluation

WORDS = {"positive": "great", "negative": "terrible"}


def test_a_generated_word_normalises_to_its_label_and_restricted_choice_picks_among_the_words():
    labels = LabelNormalization(["positive", "negative"], words=WORDS)
    assert labels.normalize("Great.") == "positive" and labels.normalize("terrible\nreally") == "negative"
    assert labels.normalize("positive") == "positive"  # the label itself still reads as the label
    assert labels.word("negative") == "terrible"
    task = TaskEvaluation("sst2", labels=labels)
    assert task.candidates().texts == ("great", "terrible")  # in label order: choice i is label i


@pytest.mark.parametrize(
    ("words", "message"),
    [({"neutral": "fine"}, "not labels"), ({"positive": "great", "negative": "Great"}, "words: 'Great' -> 'negative' clashes"),
     ({"positive": ""}, "non-empty")],
)  # fmt: skip
def test_bad_label_words_are_refused(words, message):
    with pytest.raises(ConfigError, match=message):
        LabelNormalization(["positive", "negative"], words=words)


def test_the_records_of_a_task_with_label_words_show_the_words(tmp_path, shared_data):
    from peft_continual.experiments.task_files import load_split, load_task_specs

    (tmp_path / "tasks.yaml").write_text(
        "tasks:\n  - {taskname: sst2, dataset: sst2_lmbff, prompt_template: '{sentence} It was {label}', "
        "answer_field: label, total_virtual_tokens: 0, virtual_token_splits: [], "
        "evaluation: {kind: classification, labels: {labels: [positive, negative], "
        "words: {positive: great, negative: terrible}}}}\n"
    )
    (spec,) = load_task_specs(tmp_path / "tasks.yaml")
    records = load_split(spec, shared_data, "train", None, 0)
    assert {record.fields["label"] for record in records} == {"great", "terrible"}
    assert sum(record.fields["label"] == "great" for record in records) == 16
