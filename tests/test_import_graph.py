"""The import graph has one direction, and every Python snippet of the README runs as written.

Each check runs in a fresh interpreter (a subprocess): an import cycle only shows when a
module is the first of its package to be imported.
"""

import itertools
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter per check

ROOT = Path(__file__).resolve().parents[1]
ENTRY_IMPORTS = ["import variants", "import attnlab", "from variants.baseline import BaselineAttention",
                 "import attnlab.model", "import attnlab.training.run"]


def run_python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


TEST_FILE_HEADER = re.compile(r"# (tests/test_\w+\.py)\n")


def readme_test_files() -> dict[str, str]:
    """The README's snippets that are test files (first line ``# tests/test_<name>.py``), by path:
    they run under pytest beside the example they test, not on their own."""
    return {m.group(1): block for block in readme_python_blocks() if (m := TEST_FILE_HEADER.match(block))}


def readme_scripts() -> list[str]:
    return [block for block in readme_python_blocks() if not TEST_FILE_HEADER.match(block)]


@pytest.mark.parametrize("first, second", list(itertools.permutations(ENTRY_IMPORTS[:3], 2)) +
                         [(line, "pass") for line in ENTRY_IMPORTS[3:]])
def test_entry_points_import_in_any_order(first, second):
    result = run_python(f"{first}\n{second}\n")
    assert result.returncode == 0, result.stderr


def test_the_config_module_imports_nothing_of_the_project():
    result = run_python(textwrap.dedent("""
        import sys
        import attnlab.config
        ours = sorted(m for m in sys.modules if m.split(".")[0] in ("attnlab", "variants"))
        assert ours == ["attnlab", "attnlab.config"], ours
    """))
    assert result.returncode == 0, result.stderr


def test_variants_depend_on_config_and_kernels_only():
    result = run_python(textwrap.dedent("""
        import sys
        import variants
        ours = {m for m in sys.modules if m.split(".")[0] == "attnlab"}
        assert ours <= {"attnlab", "attnlab.config", "attnlab.attention", "attnlab.cudnn_sdpa", "attnlab.norm"}, ours
    """))
    assert result.returncode == 0, result.stderr


def test_the_readme_has_python_snippets():
    assert readme_python_blocks()


@pytest.mark.parametrize("index", range(len(readme_scripts())))
def test_every_readme_python_snippet_runs_in_a_fresh_interpreter(index):
    result = run_python(readme_scripts()[index])
    assert result.returncode == 0, result.stderr


def test_the_readme_variant_example_is_complete_and_trains():
    """The "Adding a variant" example, as written, registers, validates options, and every
    parameter it creates receives a gradient on the kernel auto picks."""
    example = next(block for block in readme_python_blocks() if "@register(" in block)
    check = textwrap.dedent("""
        import torch
        from attnlab.config import ModelConfig
        from attnlab.model import build_model
        from variants import available_variants
        name = [n for n in available_variants() if n not in BEFORE][0]
        config = ModelConfig(variant=name, vocab_size=100, block_size=32, n_layer=2, n_head=4,
                             n_embd=32, intermediate_size=64, variant_options={"softcap": 20.0})
        model = build_model(config)
        assert model.config.variant_options == {"softcap": 20.0}
        slopes = [p for n, p in model.named_parameters() if n.endswith(".attn.slope")]
        assert len(slopes) == 2 and all((p == 0).all() for p in slopes), slopes  # "m_h learned (init 0)"
        idx = torch.randint(0, 100, (2, 16))
        model(idx).square().mean().backward()
        extra = [n for n, p in model.named_parameters() if ".attn." in n and p.grad is None]
        assert extra == [], extra
        assert all(p.grad.abs().sum() > 0 for p in model.parameters())
        try:
            build_model(ModelConfig(variant=name, vocab_size=100, variant_options={"cap": 1}))
        except ValueError as err:
            assert "allowed: softcap" in str(err), err
        else:
            raise AssertionError("an unknown option was accepted")
        try:
            build_model(ModelConfig(variant=name, vocab_size=100, variant_options={"softcap": -1.0}))
        except ValueError as err:
            assert f"variant {name!r}" in str(err) and "softcap must be positive, got -1.0" in str(err), err
        else:
            raise AssertionError("a negative softcap was accepted")
    """)
    prelude = "from variants import available_variants\nBEFORE = set(available_variants())\n"
    result = run_python(prelude + example + check)
    assert result.returncode == 0, result.stderr


def test_the_readme_variant_example_saved_as_a_file_passes_the_generic_variant_tests(tmp_path):
    """"Write one file ... the tests are parametrised over it": a copy of the code and tests with
    the example saved as variants/my_variant.py and the README's formula test for it beside the
    tests; every test that selects my_variant passes, the formula test on each kernel among them."""
    import shutil

    example = next(block for block in readme_python_blocks() if "@register(" in block)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout: the tracked files to copy are unknown")
    for path in tracked.stdout.splitlines():
        if not path.startswith("reference/") and (ROOT / path).is_file():
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / path, tmp_path / path)
    (tmp_path / "variants" / "my_variant.py").write_text(example, encoding="utf-8")
    formula_tests = readme_test_files()
    assert list(formula_tests) == ["tests/test_my_variant_formula.py"]
    for path, text in formula_tests.items():
        (tmp_path / path).write_text(text, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "not slow",
                             "-k", "my_variant", "tests"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 20, result.stdout[-2000:]  # the generic tests ran over it
    assert "variants/my_variant.py" not in result.stdout  # and nothing in it failed or errored
    # auto and explicit (SDPA cannot soft-cap; a flex case is in the slow tier, tests/conftest.py)
    formula_passed = re.findall(r"PASSED tests/test_my_variant_formula.py::\S+\[(\w+)\]", result.stdout)
    assert sorted(formula_passed) == ["auto", "explicit"], result.stdout[-3000:]
