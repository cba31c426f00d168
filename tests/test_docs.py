"""Examples in docstrings and in the docs pages run, so the documentation cannot drift from the code."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import peft_continual

DOCS = Path(__file__).resolve().parents[1] / "docs" / "content"
# Docstring examples that load the real SmolLM2 run with the slow tests.
SLOW_MODULES = {"peft_continual.models.embedded"}
MODULES = sorted(
    info.name for info in pkgutil.walk_packages(peft_continual.__path__, prefix="peft_continual.") if not info.ispkg
)


@pytest.mark.parametrize(
    "module_name", [pytest.param(m, marks=pytest.mark.slow) if m in SLOW_MODULES else m for m in MODULES]
)
def test_docstring_examples_run(module_name, smollm2_tokenizer):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module_name, globs={**vars(module), "tokenizer": smollm2_tokenizer}):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} docstring example(s) failed in {module_name}"


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)


PAGES = [page for page in sorted(DOCS.rglob("*.md")) if python_blocks(page)]  # a page without code cannot fail


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
@pytest.mark.integration
def test_python_blocks_in_docs_pages_run(page):
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs


def test_the_errors_guide_has_a_case_for_every_error_the_library_raises():
    import inspect

    from peft_continual import errors

    page = (DOCS / "guides" / "errors.md").read_text(encoding="utf-8")
    classes = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, errors.PeftContinualError)
        and value is not errors.PeftContinualError
    ]
    assert len(classes) >= 10
    missing = [name for name in classes if f"`{name}`" not in page]
    assert not missing, f"docs/content/guides/errors.md has no case for {missing}"
