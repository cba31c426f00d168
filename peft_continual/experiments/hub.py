"""The recipes' ``--push_to_hub``: a saved table folder, its card included, uploaded as one commit.

transformers' names: ``--push_to_hub``, ``--hub_model_id`` (default: the output folder's name), ``--hub_token``,
``--hub_private_repo``, ``--hub_revision`` (a branch, created when missing). The recipes push the table after each
round themselves (the folder ``save_pretrained`` wrote, with the card that lists every task and its results), so
``Trainer`` is given ``push_to_hub=False`` and never uploads checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft_continual.processes import main_process_only


@main_process_only
def push_table(folder: str | Path, training: Any, commit_message: str) -> str:
    """Upload ``folder`` to the Hub repository the training arguments name; return the commit's URL."""
    from peft_continual.tuners.continual_prompt._peft_compat_hub import upload_table_folder

    commit = upload_table_folder(folder, training.hub_model_id or Path(training.output_dir).name,
                                 token=training.hub_token, private=training.hub_private_repo,
                                 revision=getattr(training, "hub_revision", None) or None,
                                 commit_message=commit_message)  # fmt: skip
    return str(commit)
