"""Push a table with the real ``huggingface_hub`` client to a Hub stand-in on 127.0.0.1, load it by repository id in
fresh processes (a pinned revision, offline from the cache), push again after a second round."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.hub_stand_in import HubStandIn

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration

# Each step runs in its own interpreter: HF_ENDPOINT is read when huggingface_hub is imported.
PRELUDE = """
import json, sys, torch
from peft import PeftModel
import peft_continual
from tests.tuners.continual_prompt.conftest import (
    MIXED_ROWS, TEMPLATE_A, TEMPLATE_B, TEMPLATE_C, TASKNAME_IDS, make_batch, make_peft_model, tiny_model)

def served(model, rows):
    batch = make_batch(rows)
    batch.pop("labels")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    return {"logits": logits.flatten().tolist()[:4000], "argmax": logits.argmax(-1).tolist(),
            "hashes": model.prompt_table.row_hashes()}
"""


def run(step: str, hub: HubStandIn, home: Path, **env: str) -> dict:
    environment = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_TOKEN": "hf_stand_in",
                   "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT), **env}  # fmt: skip
    environment.pop("HF_HUB_OFFLINE", None) if "HF_HUB_OFFLINE" not in env else None
    code = PRELUDE + textwrap.dedent(step) + "\nprint('RESULT ' + json.dumps(result))\n"
    work = home.parent / "work"  # the steps' own files (saved tables), never in the checkout
    work.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", code], cwd=work, env=environment, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


PUSH_ROUND_1 = """
model = make_peft_model(templates=[TEMPLATE_A, TEMPLATE_B], seed=3, taskname_token_ids=dict(TASKNAME_IDS))
model.freeze_tasks()
model.save_pretrained("round_1")
commit = model.push_to_hub("team/table", commit_message="round 1")
result = {"commit": commit.oid, **served(model, MIXED_ROWS)}
"""

PUSH_ROUND_2 = """
model = PeftModel.from_pretrained(tiny_model(), "team/table", is_trainable=True)
model.add_tasks([TEMPLATE_C])  # a new round: the old rows stay frozen
model.freeze_tasks()
model.push_to_hub("team/table", commit_message="round 2")
result = served(model, MIXED_ROWS + [("intent", [[30, 31], 3])])
"""

LOAD_ALL = (
    'result = served(PeftModel.from_pretrained(tiny_model(), "team/table"), MIXED_ROWS + [("intent", [[30, 31], 3])])'
)


def test_a_pushed_table_loads_by_repo_id_pinned_and_offline_and_a_second_round_keeps_the_first(tmp_path):
    home, work = tmp_path / "hf_home", tmp_path / "work"
    work.mkdir()
    with HubStandIn() as hub:
        pushed = run(PUSH_ROUND_1, hub, home)
        files = hub.files("team/table")
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
        card = ModelCard(files["README.md"].decode())
        assert card.data.library_name == "peft" and "peft-continual" in card.data.tags
        assert "# table" in card.text and "| sentiment | 1 | 4 | frozen |" in card.text  # our card, not a template

        # by repo id in a fresh process: the same rows, logits and greedy tokens
        loaded = run('result = served(PeftModel.from_pretrained(tiny_model(), "team/table"), MIXED_ROWS)', hub, home)
        assert loaded == {key: pushed[key] for key in loaded}

        # the owner adds text to the card on the Hub; a second round is pushed
        user_card = files["README.md"].decode().replace("<!-- peft-continual: begin -->",
                                                        "Trained by team A.\n\n<!-- peft-continual: begin -->")  # fmt: skip
        run(f"""
from huggingface_hub import HfApi
HfApi().upload_file(path_or_fileobj={user_card.encode()!r}, path_in_repo="README.md", repo_id="team/table")
result = {{}}
""", hub, home)  # fmt: skip
        second = run(PUSH_ROUND_2, hub, home)
        assert {k: v for k, v in second["hashes"].items() if k != "intent"} == pushed["hashes"]  # bit for bit
        card = ModelCard(hub.files("team/table")["README.md"].decode())
        assert "Trained by team A." in card.text and "| intent | 2 | 3 | frozen |" in card.text
        assert "| sentiment | 1 | 4 | frozen |" in card.text
        latest = run(LOAD_ALL, hub, home)
        assert latest == {key: second[key] for key in latest}

        # the first round's commit still serves the first table
        pinned = run(f"""
model = PeftModel.from_pretrained(tiny_model(), "team/table", revision="{pushed["commit"]}")
result = served(model, MIXED_ROWS)
""", hub, home)  # fmt: skip
        assert pinned["hashes"] == pushed["hashes"] and pinned["argmax"] == pushed["argmax"]

    # the stand-in is gone: the cache serves, offline
    offline = run(LOAD_ALL, hub, home, HF_HUB_OFFLINE="1")
    assert offline == latest


def test_a_missing_repository_file_or_revision_says_which(tmp_path):
    home = tmp_path / "hf_home"
    with HubStandIn() as hub:
        run(PUSH_ROUND_1, hub, home)
        run("""
from huggingface_hub import HfApi
HfApi().upload_file(path_or_fileobj=b"# notes", path_in_repo="README.md", repo_id="team/notes")
result = {}
""".replace("upload_file", "create_repo('team/notes', exist_ok=True); HfApi().upload_file"), hub, home)  # fmt: skip
        cases = {
            '"team/missing"': "team/missing: no such folder here, and no such repository on the Hugging Face Hub",
            '"team/table", revision="v9"': "team/table: the Hub repository has no revision 'v9'",
            '"team/notes"': "team/notes: the Hub repository has no adapter_config.json: it holds no PEFT adapter",
        }
        for where, expected in cases.items():
            message = run(f"""
try:
    PeftModel.from_pretrained(tiny_model(), {where})
    result = "loaded"
except Exception as error:
    result = f"{{type(error).__name__}}: {{error}}"
""", hub, home)  # fmt: skip
            assert message.startswith(f"AdapterFileError: {expected}"), message


def test_a_local_path_without_an_adapter_says_so_not_that_the_hub_id_is_malformed(tmp_path, tiny_llama):
    """PEFT tries a name it finds no config under as a Hub id; a path like ``outputs/run/round_1/table`` then fails
    the Hub's id check, and PEFT says only "Can't find 'adapter_config.json'"."""
    from peft import PeftConfig, PeftModel

    import peft_continual  # noqa: F401  (installs the readers)
    from peft_continual.errors import AdapterFileError

    missing = tmp_path / "run" / "round_1" / "table"
    with pytest.raises(AdapterFileError, match=r"round_1/table: no such folder here, and not a Hugging Face Hub"):
        PeftConfig.from_pretrained(str(missing))
    with pytest.raises(AdapterFileError, match=r"no such folder here, and not a Hugging Face Hub repository id"):
        PeftModel.from_pretrained(tiny_llama, str(missing))
    missing.mkdir(parents=True)
    with pytest.raises(AdapterFileError, match=r"round_1/table: the folder has no adapter_config.json"):
        PeftConfig.from_pretrained(str(missing))
    (missing / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(AdapterFileError, match=r"adapter_model.safetensors is a file: give the folder that holds"):
        PeftConfig.from_pretrained(str(missing / "adapter_model.safetensors"))


def test_the_card_validates_and_a_licence_the_hub_refuses_stops_a_push_before_any_request(tmp_path):
    home = tmp_path / "hf_home"
    with HubStandIn() as hub:
        run(PUSH_ROUND_1, hub, home)
        bad_card = (
            hub.files("team/table")["README.md"]
            .decode()
            .replace("library_name: peft", "license: MIT\nlibrary_name: peft")
        )
        checked = run(f"""
from huggingface_hub import HfApi, ModelCard, hf_hub_download
ModelCard.load(hf_hub_download("team/table", "README.md")).validate()  # the client's check, at /api/validate-yaml
try:  # the Hub refuses such a card from any client
    HfApi().upload_file(path_or_fileobj={bad_card.encode()!r}, path_in_repo="README.md", repo_id="team/table")
    result = "uploaded"
except ValueError as error:
    result = str(error)
""", hub, home)  # fmt: skip
        assert checked.startswith("Invalid metadata in README.md") and "license: 'MIT'" in checked
        before = list(hub.requests)
        refused = run(f"""
from peft_continual.tuners.continual_prompt._peft_compat_hub import upload_table_folder
model = make_peft_model(templates=[TEMPLATE_A], taskname_token_ids=dict(TASKNAME_IDS))
model.save_pretrained("table")
open("table/README.md", "w").write({bad_card!r})  # the owner's edit of a round's folder, which the recipe pushes
try:
    upload_table_folder("table", "team/table", commit_message="round 2")
    result = "pushed"
except Exception as error:
    result = f"{{type(error).__name__}}: {{error}}"
""", hub, home)  # fmt: skip
        assert refused.startswith("CardMetadataError: ") and "license: 'MIT' is not a Hub licence identifier" in refused
        # stopped before the first request to the repository; a lookup that an import makes on its own (transformers
        # 5.25 with `kernels` asks the Hub for kernels-community) is no part of the push
        after = hub.requests[len(before) :]
        assert [r for r in after if "team/table" in r or not r.startswith("GET ")] == [], after


def test_a_table_of_the_embedded_model_loads_by_repo_id_with_auto_peft_model_on_another_machine(
    tmp_path, tiny_model_dir
):
    """The table names its base `embedded`; on the second machine (another Hub cache, its own embedded-model cache:
    a tiny model with the provenance entry stands in) AutoPeftModelForCausalLM resolves it and serves the same."""
    import shutil

    from peft_continual.models import embedded

    caches = []
    for machine in ("one", "two"):
        folder = tmp_path / machine / "cache" / embedded.CACHE_SUBDIR
        shutil.copytree(tiny_model_dir, folder)
        config = json.loads((folder / "config.json").read_text())
        config[embedded.PROVENANCE_KEY] = embedded._gguf_facts(None)
        (folder / "config.json").write_text(json.dumps(config))
        caches.append(str(folder.parent))
    with HubStandIn() as hub:
        pushed = run("""
from peft import get_peft_model
from peft_continual import ContinualPromptConfig
from peft_continual.models import load_base_model
config = ContinualPromptConfig(templates=[TEMPLATE_A], taskname_token_ids={"sentiment": [10, 11]})
model = get_peft_model(load_base_model("embedded")[0], config)
model.freeze_tasks()
model.push_to_hub("team/embedded-table")
result = served(model, [("sentiment", [4, [5, 6]])])
""", hub, tmp_path / "one" / "hf_home", PEFT_CONTINUAL_CACHE=caches[0])  # fmt: skip
        assert (
            json.loads(hub.files("team/embedded-table")["adapter_config.json"])["base_model_name_or_path"] == "embedded"
        )
        loaded = run("""
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained("team/embedded-table")
assert model.peft_config["default"].base_model_name_or_path.endswith("smollm2-135m-instruct")
result = served(model, [("sentiment", [4, [5, 6]])])
""", hub, tmp_path / "two" / "hf_home", PEFT_CONTINUAL_CACHE=caches[1])  # fmt: skip
        assert loaded == pushed
