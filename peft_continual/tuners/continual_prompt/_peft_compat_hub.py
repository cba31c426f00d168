"""The Hub side of the compat layer (sibling of ``_peft_compat``): ``PeftModel.push_to_hub`` and PEFT's config
readers, wrapped for this method.

- ``push_to_hub``: transformers' ``PushToHubMixin.push_to_hub`` saves the model, then overwrites the saved
  ``README.md`` with the card it found on the Hub (or a blank template). For a table, the card on the Hub is fetched
  into the folder first, ``save_pretrained`` updates it (the user's text and earlier rounds' results stay), and the
  folder is uploaded by ``upload_table_folder`` (also the recipes' ``--push_to_hub``).
- ``PeftConfigMixin.from_pretrained`` and ``_get_peft_type`` (``PeftModel.from_pretrained`` and ``AutoPeftModel*``
  start there): where PEFT says only "Can't find 'adapter_config.json'", say why (a local folder without it, a
  path that is neither a folder nor a Hub id, no such repository, no such revision, no config in it, not cached
  while offline), as ``AdapterFileError`` with PEFT's ``ValueError`` as cause.

Installed by ``_peft_compat.patch_peft_model``; pinned by ``tests/tuners/continual_prompt/test_peft_compat.py``.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from peft import PeftModel
from peft.config import PeftConfigMixin
from peft.utils import CONFIG_NAME

from peft_continual.card_metadata import check_card_metadata
from peft_continual.errors import AdapterFileError
from peft_continual.model_card import write_table_card
from peft_continual.tuners.continual_prompt._peft_compat import _ORIGINAL, PeftTunerBase, _peft_method

peft_push_to_hub = _peft_method("push_to_hub")
"""``PeftModel.push_to_hub`` (transformers' ``PushToHubMixin``), unwrapped."""


def _peft_config_method(name: str) -> Any:
    """PEFT's own ``PeftConfigMixin.<name>`` (a classmethod's function), even after ``patch_peft_model``."""
    function = PeftConfigMixin.__dict__[name].__func__
    return getattr(function, _ORIGINAL, function)


peft_config_from_pretrained = _peft_config_method("from_pretrained")
"""PEFT's ``PeftConfigMixin.from_pretrained``, unwrapped."""
peft_get_peft_type = _peft_config_method("_get_peft_type")
"""PEFT's ``PeftConfigMixin._get_peft_type`` (``PeftModel.from_pretrained``'s first download), unwrapped."""


def config_from_pretrained(cls: type, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs: Any):
    """PEFT's config loader (``PeftConfig.from_pretrained``, ``AutoPeftModel*``); where PEFT says only "Can't find
    'adapter_config.json'", say why: no such repository, no such revision, no config in it, not cached while
    offline, or a local path that is neither an adapter folder nor a Hub id."""
    with _hub_reasons(pretrained_model_name_or_path, kwargs.get("revision"), subfolder):
        return peft_config_from_pretrained(cls, pretrained_model_name_or_path, subfolder=subfolder, **kwargs)


def get_peft_type(cls: type, model_id: str, **hf_hub_download_kwargs: Any) -> Any:
    """PEFT's first read of a config in ``PeftModel.from_pretrained``, with the reasons of ``config_from_pretrained``."""
    with _hub_reasons(model_id, hf_hub_download_kwargs.get("revision"), hf_hub_download_kwargs.get("subfolder")):
        return peft_get_peft_type(cls, model_id, **hf_hub_download_kwargs)


@contextlib.contextmanager
def _hub_reasons(repo_id: Any, revision: str | None, subfolder: str | None = None) -> Iterator[None]:
    """Turn PEFT's "Can't find" ``ValueError`` of a Hub download into ``AdapterFileError`` with the reason."""
    try:
        yield
    except ValueError as error:
        cause = error.__cause__ or error.__context__
        reason = _local_reason(cause, str(repo_id), subfolder) or _hub_reason(cause, str(repo_id), revision)
        if reason is None:
            raise
        raise AdapterFileError(reason) from error


def _local_reason(cause: BaseException | None, path: str, subfolder: str | None) -> str | None:
    """What a failed Hub download means when the name is a local file or folder (PEFT looked there first and found
    no config, then tried the name as a Hub id); ``None`` when it is neither, or for an error of no download."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    if not isinstance(cause, HFValidationError | HfHubHTTPError | EntryNotFoundError | LocalEntryNotFoundError):
        return None
    folder = Path(path) / (subfolder or "")
    if folder.is_dir():
        return f"{folder}: the folder has no {CONFIG_NAME}: it holds no PEFT adapter"
    if folder.is_file():
        return f"{folder} is a file: give the folder that holds {CONFIG_NAME} (a saved adapter)"
    return None


def _hub_reason(cause: BaseException | None, repo_id: str, revision: str | None) -> str | None:
    """What a Hub download error means for an adapter, in words; ``None`` for any other error."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(cause, HFValidationError):  # PEFT found no config on disk and the name cannot be a Hub id
        return f"{repo_id}: no such folder here, and not a Hugging Face Hub repository id ('name' or 'owner/name')"

    if isinstance(cause, RepositoryNotFoundError):
        return (f"{repo_id}: no such folder here, and no such repository on the Hugging Face Hub (or it is private "
                "and no token was given: `hf auth login` or token=...)")  # fmt: skip
    if isinstance(cause, RevisionNotFoundError):
        return f"{repo_id}: the Hub repository has no revision {revision!r} (a branch, tag or commit hash)"
    if isinstance(cause, LocalEntryNotFoundError):
        return (f"{repo_id}: {CONFIG_NAME} is not in the Hugging Face cache and the Hub cannot be reached (offline "
                "mode or no network): download the adapter while online first")  # fmt: skip
    if isinstance(cause, EntryNotFoundError):
        where = f" at revision {revision!r}" if revision else ""
        return f"{repo_id}: the Hub repository has no {CONFIG_NAME}{where}: it holds no PEFT adapter"
    return None


def upload_table_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: bool | str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    before_upload: Callable[[Any, str], None] | None = None,
) -> Any:
    """Upload a saved table folder as one commit: the repository (and the branch ``revision``) created when
    missing; ``before_upload(api, repo_id)`` may still write into the folder. Returns huggingface_hub's
    ``CommitInfo``.

    The card's metadata is checked as the Hub checks it (``check_card_metadata``) before the repository is created
    and again after ``before_upload`` merged the Hub's card in: a field the Hub would refuse stops the push before
    any file is uploaded (``CardMetadataError`` naming it)."""
    from huggingface_hub import HfApi

    card = Path(folder) / "README.md"
    if card.is_file():
        check_card_metadata(card)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    if before_upload is not None:
        before_upload(api, repo_id)
        if card.is_file():
            check_card_metadata(card)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message or "Upload prompt table",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


@functools.wraps(peft_push_to_hub, assigned=("__name__", "__qualname__"))
def push_to_hub(
    self: PeftModel,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    max_shard_size: int | str | None = "50GB",
    tags: list[str] | None = None,
) -> Any:
    """PEFT's ``push_to_hub`` (same arguments); for this method the table's own card is uploaded with it.

    transformers' version saves the model, then overwrites the saved ``README.md`` with the card it found on the Hub
    (or a blank template). Here the card on the Hub (its branch ``revision``), if any, is fetched into the folder
    first, so ``save_pretrained`` updates it: the user's text and the results of earlier rounds stay, the tasks of
    this save are listed. The branch is created when missing. Other PEFT methods take PEFT's path.
    """
    if not isinstance(self.base_model, PeftTunerBase):
        return peft_push_to_hub(self, repo_id, commit_message=commit_message, commit_description=commit_description,
                                private=private, token=token, revision=revision, create_pr=create_pr,
                                max_shard_size=max_shard_size, tags=tags)  # fmt: skip
    import tempfile

    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    with tempfile.TemporaryDirectory() as folder:

        def fetch_card(api: Any, repo: str) -> None:  # the card on the Hub, if any, is updated, not replaced
            with contextlib.suppress(EntryNotFoundError, RevisionNotFoundError):  # a first push has no card yet
                card = hf_hub_download(repo, "README.md", revision=revision, token=token, endpoint=api.endpoint)
                shutil.copy(card, Path(folder) / "README.md")
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            write_table_card(folder, self.peft_config[self.active_adapter], name=repo.split("/")[-1])  # not tmp's
            if tags:
                card = ModelCard.load(Path(folder) / "README.md")
                card.data.tags = list(dict.fromkeys([*(card.data.tags or []), *tags]))
                card.save(Path(folder) / "README.md")

        return upload_table_folder(folder, repo_id, token=token, private=private, revision=revision,
                                   create_pr=create_pr, commit_message=commit_message,
                                   commit_description=commit_description, before_upload=fetch_card)  # fmt: skip
