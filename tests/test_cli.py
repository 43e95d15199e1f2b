from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geosane", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def test_version_and_help() -> None:
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("geosane ")
    out = run_cli("--help")
    assert out.returncode == 0 and "bench" in out.stdout


def test_help_does_not_import_torch() -> None:
    """Stage packages export lazily and stage CLIs import heavy libraries inside commands."""
    code = "import sys, geosane.cli; print('torch' in sys.modules, 'timm' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(REPO_ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "package",
    ["zoo", "tokens", "autoencoder", "generation", "downstream", "analysis", "difuser"],
)
def test_every_public_name_of_a_stage_resolves_to_what_it_names(package: str) -> None:
    """Lazy exports give the function or class, never a same-named submodule."""
    import importlib
    import types

    module = importlib.import_module(f"geosane.{package}")
    for name in module.__all__:
        assert not isinstance(getattr(module, name), types.ModuleType), f"geosane.{package}.{name}"
