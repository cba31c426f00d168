"""The Hub's checks of a model card's YAML metadata, run here before a table is pushed.

When a ``README.md`` is pushed, the Hub verifies its ``license``, ``datasets`` and ``model-index`` and refuses a commit
whose metadata is invalid (hub-docs ``modelcard.md``); ``RepoCard.validate`` asks its ``/api/validate-yaml`` endpoint
the same. A table's card mixes this library's metadata with what its owner added (a licence, data sets, languages),
so ``upload_table_folder`` checks the card first: a bad field fails the push before the repository is created, with
an error that names the file and the field, instead of a refused commit after the upload.

The rules, from the Hub's documentation of card metadata and of licences (``repositories-licenses.md``):

- ``license``: one of the Hub's licence identifiers (``HUB_LICENSES``); ``other`` also needs ``license_name``;
- ``datasets``: Hub dataset ids; ``base_model``: Hub model ids (one or a list), never a local path;
- ``language``: ISO 639 codes (``en``, ``nb``, ``fr-CA``); ``tags``: strings;
- ``model-index``: a list of ``{name, results}``, each result with ``task.type``, ``dataset.type``, ``dataset.name``
  and ``metrics`` of ``{type, value}``.

Checked offline only: this machine cannot reach the Hub, so the live ``validate-yaml`` was never called; the tests'
Hub stand-in (``tests/hub_stand_in.py``) answers it with these rules.

Examples:
    >>> metadata_problems({"license": "MIT", "base_model": "../models/my-model"})  # doctest: +NORMALIZE_WHITESPACE
    ["license: 'MIT' is not a Hub licence identifier (e.g. 'mit', 'apache-2.0', 'cc-by-4.0'; or 'other' with
      license_name)", "base_model: '../models/my-model' is not a Hub model id (a local path means nothing on the Hub)"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_continual.errors import CardMetadataError

HUB_LICENSES = frozenset(
    """apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
    afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
    cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
    cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
    cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
    lgpl-2.1 lgpl-3.0 isc lppl-1.3c ms-pl mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense
    zlib pddl lgpl-lr deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 gemma unknown other""".split()  # noqa: SIM905 - the Hub's table, one identifier per word
)
"""The licence identifiers the Hub accepts in a card (its documentation's table, with the Llama 3.x additions)."""

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def metadata_problems(data: Mapping[str, Any]) -> list[str]:
    """Every field of ``data`` (a card's metadata as a dict) that the Hub would refuse, one line each; ``[]``: valid."""
    problems: list[str] = []
    license_ = data.get("license")
    if license_ is not None and license_ not in HUB_LICENSES:
        problems.append(f"license: {license_!r} is not a Hub licence identifier (e.g. 'mit', 'apache-2.0', "
                        "'cc-by-4.0'; or 'other' with license_name)")  # fmt: skip
    if license_ == "other" and not isinstance(data.get("license_name"), str):
        problems.append("license: 'other' needs license_name (an id for the licence, e.g. my-license-1.0)")
    problems += _ids("datasets", data.get("datasets"), "dataset")
    problems += _ids("base_model", data.get("base_model"), "model")
    for code in _strings("language", data.get("language"), problems):
        if not _LANGUAGE.match(code):
            problems.append(f"language: {code!r} is not an ISO 639 code (e.g. 'en', 'nb', 'fr-CA')")
    _strings("tags", data.get("tags"), problems)
    for key in ("pipeline_tag", "library_name", "license_name", "license_link"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append(f"{key}: {data[key]!r} is not a string")
    if data.get("model-index") is not None:
        problems += _model_index(data["model-index"])
    return problems


def check_card_metadata(readme: str | Path) -> None:
    """Refuse a card whose metadata the Hub would refuse.

    Raises:
        CardMetadataError: naming the file and every bad field; also for YAML that does not parse.
    """
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises ValueError or yaml's errors
        raise CardMetadataError(f"{readme}: the card's metadata does not parse: {error}") from None
    problems = metadata_problems(data)
    if problems:
        raise CardMetadataError(
            f"{readme}: the Hub would refuse this card's metadata:\n  " + "\n  ".join(problems)
            + "\nFix the YAML block at the top of the file (the table's own section is rewritten on every save)."
        )  # fmt: skip


def _strings(key: str, value: Any, problems: list[str]) -> list[str]:
    """``value`` as a list of strings (the Hub takes one string or a list); a problem added for anything else."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        problems.append(f"{key}: {value!r} is not a string or a list of strings")
        return []
    return values


def _ids(key: str, value: Any, kind: str) -> list[str]:
    problems: list[str] = []
    for repo_id in _strings(key, value, problems):
        if not _REPO_ID.match(repo_id):
            why = " (a local path means nothing on the Hub)" if "/" in repo_id or "\\" in repo_id else ""
            problems.append(f"{key}: {repo_id!r} is not a Hub {kind} id{why}")
    return problems


def _model_index(index: Any) -> list[str]:
    """The required fields of ``model-index`` (hub-docs ``modelcard.md``)."""
    if not isinstance(index, list):
        return [f"model-index: must be a list of {{name, results}}, got {type(index).__name__}"]
    problems = []
    for i, entry in enumerate(index):
        where = f"model-index[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"{where}: needs a name")
            continue
        results = entry.get("results")
        if not isinstance(results, list):
            problems.append(f"{where}.results: must be a list")
            continue
        for j, result in enumerate(results):
            at = f"{where}.results[{j}]"
            result = result if isinstance(result, dict) else {}
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or not isinstance(task.get("type"), str):
                problems.append(f"{at}.task.type: required")
            for field in ("type", "name"):
                if not isinstance(dataset, dict) or not isinstance(dataset.get(field), str):
                    problems.append(f"{at}.dataset.{field}: required")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{at}.metrics: a non-empty list of {{type, value}} is required")
                continue
            for k, metric in enumerate(metrics):
                if not isinstance(metric, dict) or not isinstance(metric.get("type"), str) or "value" not in metric:
                    problems.append(f"{at}.metrics[{k}]: needs type and value")
    return problems
