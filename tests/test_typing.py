"""The code base type-checks with mypy (part of the test suite, next to ruff, so CI and local runs agree).

The configuration is ``[tool.mypy]`` in pyproject.toml: all of ``src/geosane``, with the strict flags
on the modules listed in its strict overrides section (new modules go there).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO_ROOT


def _mypy_installed() -> bool:
    return subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode == 0


def test_mypy_clean(request: pytest.FixtureRequest) -> None:
    if not _mypy_installed():
        pytest.skip("mypy is not installed (install the dev extra)")
    # The incremental cache lives in this checkout's pytest cache (git-ignored): a warm run takes
    # seconds instead of a minute, and parallel CI jobs in separate checkouts never share it.
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache_dir = cache.mkdir("mypy") if cache is not None else None
    cmd = [sys.executable, "-m", "mypy", "--config-file", "pyproject.toml", "--no-error-summary"]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_modules_exist() -> None:
    """mypy silently ignores an overrides entry that matches no module: a renamed strict module
    would stop being checked strictly without anyone noticing."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    strict = [o for o in config["overrides"] if o.get("disallow_untyped_defs")]
    assert strict, "no strict overrides section in [tool.mypy]"
    for module in (m for section in strict for m in section["module"]):
        path = REPO_ROOT / "src" / module.removesuffix(".*").replace(".", "/")
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), (
            f"strict mypy module {module} does not exist under src/"
        )
