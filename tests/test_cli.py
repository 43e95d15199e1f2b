from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["finetune", "rsscn7", "train.lr=-1", "--init", "scratch"], "train.lr must be a positive number, got -1"),
        (["compare", "compare_rsscn7", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
        (["train", "tiny", "train.lr=0"], "train.lr must be a positive number, got 0"),
    ],
)
def test_bad_options_are_refused_before_torch_is_imported(tmp_path: Path, args: list[str], message: str) -> None:
    """A fresh interpreter refuses the option with one line and exit 2 without ever importing torch."""
    out = tmp_path / "out"
    full = [*args, *(["--out", str(out)] if args[0] != "train" else [f"train.out={out}"])]
    code = (
        "import sys\nfrom geosane.cli import main\ntry:\n"
        f"    main({full!r})\nexcept SystemExit as e:\n    print('torch' in sys.modules, e.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={"PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "300", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert message in done.stderr and not out.exists(), done.stderr
    assert done.stdout.split() == ["False", "2"], done.stderr


def test_library_errors_name_parameters_and_the_cli_prints_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An API caller is told the parameter (top_k=5); `geosane` prints the flag (--top-k 5) instead."""
    import pickle

    from geosane.cli import main
    from geosane.errors import GeosaneError, cli_flags
    from geosane.generation.config import GenerateConfig, validate_config

    out = tmp_path / "out"
    with pytest.raises(GeosaneError) as caught:
        validate_config(GenerateConfig(ae=tmp_path / "ae", prompt="timm:resnet18", out=out, num_candidates=2, top_k=5))
    assert str(caught.value) == "top_k=5 must be between 1 and num_candidates (2)"
    assert caught.value.cli_message() == "--top-k 5 must be between 1 and --num-candidates (2)"
    with pytest.raises(SystemExit) as code:
        main(["generate", "--ae", str(tmp_path / "ae"), "--prompt", "timm:resnet18", "--out", str(out),
              "--num-candidates", "2", "--top-k", "5"])  # fmt: skip
    err = capsys.readouterr().err
    assert code.value.code == 2 and "error: --top-k 5 must be between 1 and --num-candidates (2)" in " ".join(err.split())
    assert "top_k" not in err and not out.exists()

    # a spelling is replaced only where it stands alone, in one pass; flags survive pickling (workers)
    exc = GeosaneError(
        "align_anchors=True needs anchors=N; runs/anchors and my_anchors stay; pass overwrite=True",
        flags=cli_flags("align_anchors", "anchors", "overwrite"),
    )
    expected = "--align-anchors needs --anchors N; runs/anchors and my_anchors stay; pass --overwrite"
    assert exc.cli_message() == expected
    assert pickle.loads(pickle.dumps(exc)).cli_message() == expected
    assert GeosaneError("plain").cli_message() == "plain"
