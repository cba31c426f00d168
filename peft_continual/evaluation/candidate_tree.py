"""Candidate trees: the candidate continuations of one prompt packed into one row that shares their prefixes.

Restricted scoring runs every candidate's answer tokens after the prompt. Candidates repeat each other's first
tokens: the 64 intents of ``assistant_nlu`` all start with ``Intent:`` and many with ``iot_hue_`` or ``play_``, so as
separate rows they are 461 tokens a record and as a tree 142. The tree is one row: a node for each distinct prefix
of the continuations, parents before children, run on top of the prompt's KV cache with a 4D attention mask that
lets a node see the prompt and its own ancestors only, at the position it has in its candidate's own sequence (as
tree attention does in speculative decoding). Every node's logits are then those of its candidate's full forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

TREE_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")
"""Attention implementations that take a custom 4D mask as it is (``transformers`` passes a 4D mask through)."""


def accepts_tree_masks(model: Any) -> bool:
    """Whether ``model``'s attention takes a custom 4D mask (``eager``, ``sdpa``); others score full forwards."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in TREE_ATTENTION_IMPLEMENTATIONS


@dataclass
class CandidateTree:
    """The nodes of one prompt's candidate continuations, and each continuation's path through them.

    A continuation ``c`` of ``T`` tokens is scored at ``c[0]`` from the prompt's last logits and at ``c[t]``
    (``t >= 1``) from the logits of the node of its prefix ``c[:t]``: ``paths[i][t - 1]``. The last token of a
    continuation predicts nothing scored, so prefixes of length ``T`` get no node.
    """

    input_ids: list[int] = field(default_factory=list)  # (K,) the last token of each node's prefix
    depths: list[int] = field(default_factory=list)  # (K,) 0 for a prefix of one token
    parents: list[int] = field(default_factory=list)  # (K,) parent node, -1 at depth 0
    paths: list[list[int]] = field(default_factory=list)  # per continuation, its T - 1 prefix nodes

    def __len__(self) -> int:
        return len(self.input_ids)


def build_tree(continuations: Sequence[Sequence[int]]) -> CandidateTree:
    """Pack token sequences (each a candidate's answer tokens after the shared prompt) into one tree.

    Examples:
        >>> tree = build_tree([[5, 6, 7], [5, 6, 8], [5, 9]])
        >>> tree.input_ids, tree.depths, tree.parents, tree.paths
        ([5, 6], [0, 1], [-1, 0], [[0, 1], [0, 1], [0]])
    """
    tree = CandidateTree()
    nodes: dict[tuple[int, ...], int] = {}
    for tokens in continuations:
        path: list[int] = []
        for t in range(1, len(tokens)):
            prefix = tuple(tokens[:t])
            if prefix not in nodes:
                nodes[prefix] = len(tree.input_ids)
                tree.input_ids.append(tokens[t - 1])
                tree.depths.append(t - 1)
                tree.parents.append(path[-1] if path else -1)
            path.append(nodes[prefix])
        tree.paths.append(path)
    return tree


def tree_inputs(
    trees: Sequence[CandidateTree], prompt_mask: torch.Tensor, pad_token_id: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Model inputs that run each tree on top of its prompt's KV cache (row ``p`` of the cache for ``trees[p]``).

    Args:
        trees: one tree per prompt row.
        prompt_mask: (P, Lp) attention mask of the left-padded prompts.
        pad_token_id: id written after short trees (each padding node attends to itself only, nothing reads it).
        dtype: the attention's dtype; the mask is additive (0 to attend, the dtype's minimum not to).

    Returns:
        ``input_ids`` (P, K), ``position_ids`` (P, K) counted on from each prompt's length, and ``attention_mask``
        (P, 1, K, Lp + K).
    """
    width = max(len(tree) for tree in trees)
    count = len(trees)
    input_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    positions = torch.zeros((count, width), dtype=torch.long)
    sees = torch.zeros((count, width, prompt_mask.shape[1] + width), dtype=torch.bool)  # (P, K, Lp + K)
    sees[:, :, : prompt_mask.shape[1]] = prompt_mask.bool().unsqueeze(1)
    prompt_lengths = prompt_mask.sum(dim=1).tolist()
    for p, tree in enumerate(trees):
        size = len(tree)
        input_ids[p, :size] = torch.tensor(tree.input_ids, dtype=torch.long)
        positions[p, :size] = torch.tensor(tree.depths, dtype=torch.long) + int(prompt_lengths[p])
        own = sees[p, :, prompt_mask.shape[1] :]  # (K, K) node -> node
        for node, parent in enumerate(tree.parents):
            if parent >= 0:
                own[node] = own[parent]
            own[node, node] = True
        sees[p, size:, : prompt_mask.shape[1]] = False
        own[size:, size:] = torch.eye(width - size, dtype=torch.bool)
    mask = torch.zeros(sees.shape, dtype=dtype).masked_fill_(~sees, torch.finfo(dtype).min)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask.unsqueeze(1)}
