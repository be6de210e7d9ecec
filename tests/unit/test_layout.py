"""Guards for the repository layout that DESIGN.md depends on."""

from __future__ import annotations

import importlib
import operator
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_stdlib_operator_module_is_not_shadowed() -> None:
    # operator/ is a source root; a package there would hide the standard library's module.
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert not (ROOT / "worker" / "__init__.py").exists()
    assert not (ROOT / "tests" / "operator" / "__init__.py").exists()
    loose = [p.name for p in (ROOT / "operator").glob("*.py")] + [
        p.name for p in (ROOT / "worker").glob("*.py")
    ]
    assert loose == [], f"loose modules in a source root: {loose}"
    assert hasattr(operator, "itemgetter"), operator.__file__
    assert Path(str(operator.__file__)).parent != ROOT / "operator"


@pytest.mark.parametrize("package", ["llmfleet_operator", "llmfleet_worker"])
def test_packages_import_from_source_roots(package: str) -> None:
    module = importlib.import_module(package)
    assert Path(str(module.__file__)).resolve().is_relative_to(ROOT)


@pytest.mark.parametrize("script", ["llmfleet-operator", "llmfleet-worker"])
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_console_scripts_answer(script: str, flag: str) -> None:
    exe = Path(sys.executable).parent / script
    result = subprocess.run([str(exe), flag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    if flag == "--version":
        assert result.stdout.strip().startswith(f"{script} ")
    else:
        assert "usage:" in result.stdout
