"""Shared-prompt scoring (each prompt once, answers from its KV cache) equals one full forward per candidate."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model

from peft_continual.data.collate import ContinualPromptCollator
from peft_continual.data.records import TaskRecord
from peft_continual.data.templates import TaskTemplate
from peft_continual.data.tokenize import PromptTokenizer
from peft_continual.evaluation import restricted
from peft_continual.evaluation.candidate_tree import accepts_tree_masks, build_tree, tree_inputs
from peft_continual.evaluation.prompt_sharing import share_prompts
from peft_continual.evaluation.restricted import (
    CandidateSet,
    _candidate_rows,
    _scoring_tokenizer,
    answer_log_likelihoods,
    score_candidates,
)
from peft_continual.tuners.continual_prompt import ContinualPromptConfig

from .fakes import FakeVirtualModel

PLAIN = TaskTemplate("sentiment", "Review: {sentence}\nSentiment: {label}", 0, [], "label")
# multi-token labels, some sharing their first tokens ("very ", "mixed, leaning "): continuations of different
# lengths whose common prefixes are one node of the candidate tree
LABELS = [
    "positive",
    "negative",
    "neutral",
    "very positive",
    "mixed, leaning negative",
    "very negative",
    "mixed, leaning positive",
]
SENTENCES = ["Up.", "Shares fell 5% after the profit warning.", "Flat quarter", "Revenue doubled year on year."]


def records(sentences=SENTENCES, taskname="sentiment", field="sentence"):
    return [TaskRecord(taskname, {field: s, "label": "x"}, f"{taskname}[{i}]") for i, s in enumerate(sentences)]


def full_forward_scores(model, prompt_tokenizer, records, candidates, pass_virtual_tokens=None):
    """The reference: one unpadded full forward over prompt + answer per candidate (None for skipped records)."""
    sets = {name: c if isinstance(c, CandidateSet) else CandidateSet(tuple(c)) for name, c in candidates.items()}
    per_record = _candidate_rows(_scoring_tokenizer(prompt_tokenizer, list(sets)), records, sets)
    collate = ContinualPromptCollator(pad_token_id=prompt_tokenizer.tokenizer.eos_token_id)
    scores = []
    with torch.inference_mode():
        for examples in per_record:
            if examples is None:
                scores.append(None)
                continue
            scores.append([answer_log_likelihoods(model, collate([ex]), pass_virtual_tokens).item() for ex in examples])
    return scores


def assert_same(choices, expected):
    assert [c is None for c in choices] == [e is None for e in expected]
    for choice, scores in zip(choices, expected, strict=True):
        if choice is not None:
            assert choice.scores == pytest.approx(scores, abs=1e-4)
            assert choice.index == max(range(len(scores)), key=lambda i: (scores[i], -i))


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("score_eos", [True, False])
@pytest.mark.parametrize("batch_size", [2, 64])
@pytest.mark.parametrize("tree_tokens", [1, 64])
@pytest.mark.integration
def test_shared_prompt_scores_equal_full_forward_scores(
    make_tiny_model, smollm2_tokenizer, family, score_eos, batch_size, tree_tokens, monkeypatch
):
    # batch_size 2: several prompt forwards of 2 prompts (left padding inside each, trees of different sizes padded),
    # each pair's trees in one forward on top of the cache; tree_tokens 1: one prompt per forward; gpt2 has learned
    # absolute positions
    monkeypatch.setattr(restricted, "TREE_TOKENS_PER_PROMPT", tree_tokens)
    model = make_tiny_model(family, initializer_range=0.5)
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    candidates = {"sentiment": CandidateSet(tuple(LABELS), score_eos=score_eos)}
    choices = score_candidates(model, prompt_tokenizer, records(), candidates, batch_size=batch_size, progress=False)
    assert_same(choices, full_forward_scores(model, prompt_tokenizer, records(), candidates))
    assert len({c.index for c in choices}) > 1 or len({round(s, 3) for s in choices[0].scores}) > 1  # not degenerate


@pytest.mark.integration
def test_each_prompt_runs_once_and_duplicates_share_it(tiny_llama, smollm2_tokenizer):
    model = FakeVirtualModel(tiny_llama, {})
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    twice = records(SENTENCES + SENTENCES[:2])  # the last two records repeat the first two
    choices = score_candidates(model, prompt_tokenizer, twice, {"sentiment": LABELS}, batch_size=64, progress=False)
    assert [(call["rows"], call["cached"]) for call in model.calls] == [(4, False), (4, True)]  # one tree a prompt
    assert [c.scores for c in choices[4:]] == [c.scores for c in choices[:2]]
    assert_same(choices, full_forward_scores(tiny_llama, prompt_tokenizer, twice, {"sentiment": LABELS}))


MIXED_TEMPLATES = [
    TaskTemplate("sentiment", "<|VIRTUAL_PROMPT_0|> {sentence} sentiment: {label}", 4, [4], "label"),
    TaskTemplate("topic", "{text} <|VIRTUAL_PROMPT_0|> topic <|VIRTUAL_PROMPT_1|> answer: {label}", 5, [2, 3], "label"),
    TaskTemplate("yesno", "Question: {question}\nAnswer: {label}", 0, [], "label"),
]
MIXED_CANDIDATES = {
    "sentiment": ["positive", "negative", "neutral"],
    "topic": CandidateSet(("economy", "sports", "world news", "science and technology"), score_eos=False),
    "yesno": ["yes", "no"],
}


def mixed_records():
    return [
        *records(["Profits rose 5%.", "Shares fell sharply after the warning."]),
        *records(["The central bank cut rates.", "A late goal won it.", "New chip."], "topic", "text"),
        *records(["Is it raining?"], "yesno", "question"),
    ]


@pytest.mark.parametrize("batch_size", [3, 64])
@pytest.mark.integration
def test_mixed_tasks_with_different_candidate_counts_on_the_prompt_model(
    make_tiny_model, smollm2_tokenizer, batch_size
):
    config = ContinualPromptConfig(templates=MIXED_TEMPLATES[:2]).tokenize_tasknames(smollm2_tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(make_tiny_model(initializer_range=0.5), config).eval()
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, MIXED_TEMPLATES)
    rows = mixed_records()[:5]  # the p-tuned tasks (the plain task has no prompt rows in this adapter)
    candidates = {name: MIXED_CANDIDATES[name] for name in ("sentiment", "topic")}
    choices = score_candidates(model, prompt_tokenizer, rows, candidates, batch_size=batch_size, progress=False)
    assert [len(c.scores) for c in choices] == [3, 3, 4, 4, 4]
    assert_same(choices, full_forward_scores(model, prompt_tokenizer, rows, candidates))


def test_mixed_tasks_with_plain_and_virtual_templates(tiny_qwen2, smollm2_tokenizer):
    model = FakeVirtualModel(tiny_qwen2, {"sentiment": 4, "topic": 5})
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, MIXED_TEMPLATES)
    choices = score_candidates(model, prompt_tokenizer, mixed_records(), MIXED_CANDIDATES, batch_size=4, progress=False)
    assert [len(c.scores) for c in choices] == [3, 3, 4, 4, 4, 2]
    prompt_rows = [call["rows"] for call in model.calls if not call["cached"]]
    assert prompt_rows == [4, 2]  # 6 records, 6 prompts
    assert all(call["tasknames"] is None for call in model.calls if call["cached"])
    assert_same(choices, full_forward_scores(model, prompt_tokenizer, mixed_records(), MIXED_CANDIDATES))


def test_a_row_without_a_prompt_falls_back_to_a_full_forward(tiny_llama, smollm2_tokenizer):
    # "{label}" alone: no BOS (SmolLM2 adds none), so the answer starts at position 0 and there is no prompt to share;
    # as in a full forward, its first token is not scored (nothing predicts it)
    bare = TaskTemplate("bare", "{label}", 0, [], "label")
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN, bare])
    rows = [*records(SENTENCES[:2]), TaskRecord("bare", {"label": "x"}, "bare[0]")]
    candidates = {"sentiment": LABELS, "bare": ["good morning", "hello"]}
    sets = {name: CandidateSet(tuple(c)) for name, c in candidates.items()}
    plan = share_prompts(_candidate_rows(_scoring_tokenizer(prompt_tokenizer, list(sets)), rows, sets))
    assert [(r, c) for r, c, _ in plan.full] == [(2, 0), (2, 1)]
    assert len(plan.prompts) == 2 and len(plan.continuations) == 14
    choices = score_candidates(tiny_llama, prompt_tokenizer, rows, candidates, batch_size=3, progress=False)
    assert_same(choices, full_forward_scores(tiny_llama, prompt_tokenizer, rows, candidates))


def test_candidates_whose_prompts_differ_get_prompts_of_their_own(tiny_gpt2, smollm2_tokenizer):
    # truncation cuts more of the sentence for a longer candidate, so the candidates of one record are conditioned
    # on different prompts; each is scored against its own, exactly as a full forward over its example
    template = TaskTemplate(
        "sentiment", "Review: {sentence}\nSentiment: {label}", 0, [], "label", truncate_field="sentence"
    )
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [template], max_length=14)
    rows = records([SENTENCES[1]])
    candidates = {"sentiment": ["positive", "mixed, leaning negative"]}
    sets = {"sentiment": CandidateSet(tuple(candidates["sentiment"]))}
    examples = _candidate_rows(_scoring_tokenizer(prompt_tokenizer, ["sentiment"]), rows, sets)
    assert [ex.truncated_tokens > 0 for ex in examples[0]] == [True, True]
    plan = share_prompts(examples)
    assert len(plan.prompts) == 2 and not plan.full
    choices = score_candidates(tiny_gpt2, prompt_tokenizer, rows, candidates, progress=False)
    assert_same(choices, full_forward_scores(tiny_gpt2, prompt_tokenizer, rows, candidates))


def test_candidate_tree_shares_prefixes_and_each_node_sees_only_its_ancestors():
    # "very positive"/"very negative" as [very, pos, EOS]/[very, neg, EOS]; "positive" as [pos, EOS]
    tree = build_tree([[7, 8, 2], [7, 9, 2], [8, 2]])
    assert tree.input_ids == [7, 8, 9, 8] and tree.depths == [0, 1, 1, 0] and tree.parents == [-1, 0, 0, -1]
    assert tree.paths == [[0, 1], [0, 2], [3]]
    small = build_tree([[5, 2]])
    inputs = tree_inputs([tree, small], torch.tensor([[0, 1, 1], [1, 1, 1]]), pad_token_id=0, dtype=torch.float32)
    assert inputs["input_ids"].tolist() == [[7, 8, 9, 8], [5, 0, 0, 0]]
    assert inputs["position_ids"].tolist() == [[2, 3, 3, 2], [3, 0, 0, 0]]
    sees = (inputs["attention_mask"][:, 0] == 0).int().tolist()  # (P, K, Lp + K)
    assert sees[0] == [[0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 1]]
    assert sees[1] == [[1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1]]


@pytest.mark.integration
def test_models_without_4d_masks_score_every_candidate_by_a_full_forward(tiny_llama, smollm2_tokenizer, monkeypatch):
    assert accepts_tree_masks(tiny_llama) and accepts_tree_masks(FakeVirtualModel(tiny_llama, {}))
    assert not accepts_tree_masks(SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2")))
    assert not accepts_tree_masks(torch.nn.Linear(1, 1))  # no config: nothing says it takes a 4D mask
    model = FakeVirtualModel(tiny_llama, {})
    monkeypatch.setattr(restricted, "accepts_tree_masks", lambda model: False)
    prompt_tokenizer = PromptTokenizer(smollm2_tokenizer, [PLAIN])
    choices = score_candidates(model, prompt_tokenizer, records(), {"sentiment": LABELS}, batch_size=64, progress=False)
    assert all(not call["cached"] for call in model.calls)
    assert sum(call["rows"] for call in model.calls) == len(SENTENCES) * len(LABELS)
    monkeypatch.undo()
    assert_same(choices, full_forward_scores(tiny_llama, prompt_tokenizer, records(), {"sentiment": LABELS}))


def test_the_64_intents_make_a_tree_of_142_tokens_instead_of_461(smollm2_tokenizer):
    # the numbers the evaluation guide quotes: the demo's intent candidates after a prompt, as rows and as a tree
    from peft_continual.experiments.task_files import load_task_specs

    tasks = Path(__file__).resolve().parents[2] / "recipes/configs/continual_p_tuning/tasks.yaml"
    intent = {s.taskname: s for s in load_task_specs(tasks)}["intent_and_slot"]
    prompt = len(smollm2_tokenizer("wake me up\n")["input_ids"])
    continuations = [
        smollm2_tokenizer("wake me up\n" + text)["input_ids"][prompt:] for text in intent.evaluation.candidates().texts
    ]
    assert len(continuations) == 64
    assert sum(len(tokens) - 1 for tokens in continuations) == 461  # forward tokens as one row per candidate
    assert len(build_tree(continuations)) == 142
