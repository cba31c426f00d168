"""What an adapter folder of this method must hold before PEFT reads it: a readable ``adapter_config.json`` and
weights in safetensors, never a pickle.

PEFT's ``load_adapter`` falls back to ``adapter_model.bin`` (a torch pickle, read with ``torch.load``) when a folder
has no safetensors file, and passes a damaged file's raw ``SafetensorError`` ("header too large", "incomplete
metadata") up without its path. For adapters of this method, ``PeftModel.load_adapter`` (and so
``PeftModel.from_pretrained``, ``AutoPeftModel*`` and Trainer's best-checkpoint load, which call it) first checks a
local folder here: a pickle is never opened whatever its name, and a damaged file is refused with its path and what
to do, before anything is loaded into the model. An adapter on the Hugging Face Hub gets the same checks: its config
and safetensors weights are downloaded into the Hub cache first (``hub_adapter_folder``), where PEFT then finds them.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors import SafetensorError, safe_open

from peft_continual.errors import AdapterFileError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
"""Files a torch pickle is usually saved as; none of them is ever opened here."""


def local_adapter_folder(model_id: str | os.PathLike, subfolder: str | None = None) -> Path | None:
    """The adapter's folder on this machine, or ``None`` for a Hub repository id."""
    folder = Path(model_id, subfolder or "")
    return folder if folder.is_dir() else None


def hub_adapter_folder(model_id: str | os.PathLike, method: str, **download: Any) -> Path | None:
    """The folder of the Hugging Face Hub cache that holds a Hub adapter's ``adapter_config.json`` and, for an
    adapter of ``method`` (its ``peft_type``), its ``adapter_model.safetensors``, downloaded first (or found in the
    cache), so that the checks of a local folder apply before PEFT reads them; PEFT then finds both in the cache.

    Args:
        model_id: A Hub repository id.
        method: The ``peft_type`` whose weights are checked; other methods' weights are left to PEFT.
        download: ``PeftModel.load_adapter``'s keyword arguments; those of ``hf_hub_download`` (``revision``,
            ``subfolder``, ``token``, ``cache_dir``...) are used.

    Returns:
        The folder, or ``None`` when the config cannot be fetched (PEFT then reports that as before) or the adapter
        is of another method.

    Raises:
        AdapterFileError: the repository has no ``adapter_model.safetensors`` (PEFT would fall back to
            ``adapter_model.bin``, a pickle), or its config is damaged.
    """
    known = inspect.signature(hf_hub_download).parameters
    download = {key: value for key, value in download.items() if key in known and key != "filename"}
    try:
        config_path = Path(hf_hub_download(str(model_id), CONFIG_NAME, **download))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HFValidationError):
        return None  # not a Hub adapter (or not reachable, LocalEntryNotFoundError): PEFT says so as it always did
    folder = config_path.parent
    if read_adapter_config(folder).get("peft_type") != method:
        return None
    where = f"{model_id}" + (f" (subfolder {download['subfolder']})" if download.get("subfolder") else "")
    try:
        hf_hub_download(str(model_id), SAFETENSORS_WEIGHTS_NAME, **download)
    except LocalEntryNotFoundError:  # a subclass of EntryNotFoundError: offline, or the network is down
        raise AdapterFileError(
            f"{where}: {SAFETENSORS_WEIGHTS_NAME} is not in the Hugging Face cache and the Hub cannot be reached "
            "(offline mode or no network): download the adapter while online first"
        ) from None
    except EntryNotFoundError:
        raise AdapterFileError(
            f"{where} on the Hugging Face Hub has no {SAFETENSORS_WEIGHTS_NAME}; PEFT would load adapter_model.bin, a "
            "torch pickle, which this library never opens (unpickling can run code): ask its owner for safetensors"
        ) from None
    return folder


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json`` as a dict; a missing or damaged file gets our error with its path."""
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterFileError(
            f"{folder}: no {CONFIG_NAME}; is this an adapter folder (save_pretrained writes one)?"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise damaged_config(path, error) from None
    check_config_object(path, data)
    return data


def damaged_config(path: str | os.PathLike, error: ValueError) -> AdapterFileError:
    """Our error for a config file that is not JSON (damaged, cut short, not text); the one message for every
    reader of ``adapter_config.json`` (ours, and PEFT's ``from_json_file`` through ``compat``)."""
    if isinstance(error, json.JSONDecodeError):
        reason = f"{error.msg} at line {error.lineno}, column {error.colno}"
    else:
        reason = (
            f"not UTF-8 text: {error.reason} at byte {error.start}"
            if isinstance(error, UnicodeDecodeError)
            else str(error)
        )
    return AdapterFileError(
        f"{path}: not valid JSON ({reason}): the file is damaged or cut short; save the adapter again, or restore the "
        "file"
    )


def check_config_object(path: str | os.PathLike, data: Any) -> None:
    """A config file must hold one JSON object (field -> value)."""
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path}: holds a JSON {type(data).__name__}, not an object of config fields")


def check_adapter_weights(folder: Path) -> dict[str, list[int]]:
    """Refuse a folder whose weights are not a readable safetensors file; return each tensor's name and shape.

    Only the file's header is read (names, dtypes, shapes, offsets), which safetensors checks against the file's
    size: a truncated, empty or foreign file fails here.
    """
    path = folder / SAFETENSORS_WEIGHTS_NAME
    if not path.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = (
            f"; {pickles} would be torch pickles, which this library never opens (unpickling can run code): make a "
            f"{SAFETENSORS_WEIGHTS_NAME} from them where you trust their source (safetensors.torch.save_file)"
            if pickles
            else ""
        )
        raise AdapterFileError(f"{folder}: no {SAFETENSORS_WEIGHTS_NAME}{hint}")
    with open(path, "rb") as file:
        start = file.read(9)
    if _looks_like_a_pickle(start, path.stat().st_size):
        raise AdapterFileError(
            f"{path}: a torch pickle renamed to .safetensors, which this library never opens (unpickling can run "
            "code); save the adapter again with save_pretrained"
        )
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {name: list(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(
            f"{path}: not a readable safetensors file ({error}): the file is damaged, cut short or of another format; "
            "save the adapter again, or restore the file"
        ) from None


def _looks_like_a_pickle(start: bytes, size: int) -> bool:
    """Do a file's first 9 bytes start a pickle (protocol 2-5: ``0x80`` then the protocol) or ``torch.save``'s zip
    archive, and not a safetensors file (a little-endian u64 header length that fits the file, then ``{``)? A
    safetensors header of 384 bytes starts with ``0x80 0x01``, one of 640 bytes with ``0x80 0x02``."""
    if len(start) == 9 and start[8:9] == b"{" and int.from_bytes(start[:8], "little") <= size - 8:
        return False
    return start.startswith(b"PK\x03\x04") or (
        start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )


TABLE_KEY = "continual_prompt_table.task:"
"""What the saved name of a task's table rows holds, before the task name (PEFT adds its module prefix in front)."""


def check_table_shapes(folder: Path, config: dict[str, Any], shapes: dict[str, list[int]]) -> None:
    """Refuse weights whose table rows do not match the config: every frozen task's rows ``(n_T, token_dim *
    prompt_depth)`` as ``frozen_tasks``, ``token_dim`` and ``prompt_depth`` say, and no rows of a task the config
    does not list (checked before ``load_state_dict``, which would fail half-way with a raw size-mismatch error)."""
    path, config_path = folder / SAFETENSORS_WEIGHTS_NAME, folder / CONFIG_NAME
    rows = {name.split(TABLE_KEY, 1)[1]: shape for name, shape in shapes.items() if TABLE_KEY in name}
    frozen = config.get("frozen_tasks") or {}
    width = config.get("token_dim")
    if isinstance(width, int) and isinstance(config.get("prompt_depth", 1), int):
        width *= config.get("prompt_depth", 1)  # deep prompts: one token_dim-wide slice per layer
    missing = sorted(set(frozen) - set(rows))
    if missing:
        raise AdapterFileError(
            f"{path}: holds no rows for task(s) {missing}, which {config_path} lists as frozen: the weights and the "
            "config come from different saves; save the adapter again"
        )
    extra = sorted(set(rows) - set(frozen))
    if extra:
        raise AdapterFileError(
            f"{path}: holds rows for task(s) {extra}, which {config_path} does not list: the weights and the config "
            "come from different saves; save the adapter again"
        )
    for task, count in frozen.items():
        if rows[task] != [count, width]:
            raise AdapterFileError(
                f"{path}: the rows of task {task!r} have shape {rows[task]}, but {config_path} says {count} virtual "
                f"tokens of width {width}: the weights and the config come from different saves; save the adapter "
                "again"
            )
