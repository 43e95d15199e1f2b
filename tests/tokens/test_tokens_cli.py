"""``geosane tokenize``, ``geosane tokens info`` and ``geosane bench tokenizer`` end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from safetensors.torch import load_file, save_file

from geosane.tokens import TokenStore, detokenize
from geosane.zoo import Zoo
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parents[2]


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_tokenize_command_end_to_end(small_zoo: Zoo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "200"}
    args = ["tokenize", "--zoo", str(small_zoo.path), "--out", str(out), "--token-size", "100"]
    done = subprocess.run([sys.executable, "-m", "geosane", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "3 tokenized, 0 already done; 3 models" in done.stderr
    store = TokenStore(out)
    assert store.ids == small_zoo.ids and store.token_size == 100 and all(store.verify(i) for i in range(3))
    assert detokenize(store.load(2)).keys() == small_zoo.load_state_dict(small_zoo.ids[2]).keys()
    code, _, err = run_cli(capsys, *args)  # a rerun (in-process: faster) has nothing to do
    assert code == 0 and "0 tokenized, 3 already done" in " ".join(err.split())  # rich may wrap the line


def test_tokens_info_lists_models_and_verifies(small_store: TokenStore, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "tokens", "info", str(small_store.path), "--verify")
    assert (
        code == 0
        and "test_resnet" in err
        and "0.610" in err
        and f"{small_store.total_tokens:,} tokens" in err
    )
    broken = tmp_path / "store"
    shutil.copytree(small_store.path, broken)
    (broken / small_store.records[0].file).write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "tokens", "info", str(broken), "--verify")
    assert code == 2 and "1 token file(s)" in error_line(err)


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(small_zoo: Zoo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "store"
    base = ["tokenize", "--zoo", str(small_zoo.path), "--out", str(out)]

    code, _, err = run_cli(capsys, *base, "--token-size", "0")
    assert code == 2 and "token_size must be a positive integer, got 0" in error_line(err)
    code, _, err = run_cli(capsys, *base, "--mode", "diagonal")
    assert code == 2 and "unknown tokenization mode 'diagonal'" in error_line(err)
    code, _, err = run_cli(capsys, "tokens", "info", str(tmp_path))
    assert code == 2 and "is not a token store" in error_line(err)
    code, _, err = run_cli(capsys, "tokenize", "--zoo", str(tmp_path), "--out", str(out))
    assert code == 2 and "is not a zoo" in error_line(err)
    assert not out.exists()

    zoo = Zoo(shutil.copytree(small_zoo.path, tmp_path / "zoo"))
    (zoo.path / zoo.entries[0].file).unlink()
    code, _, err = run_cli(capsys, "tokenize", "--zoo", str(zoo.path), "--out", str(out))
    assert code == 2 and f"manifest row '{zoo.entries[0].id}' points to missing file" in error_line(err)
    assert not out.exists()


def test_nonfinite_and_empty_models_in_a_zoo(small_zoo: Zoo, tmp_path: Path, capsys, monkeypatch) -> None:
    # the files are edited behind the manifest: skip its checksum check to reach the tokenizer's own
    monkeypatch.setenv("GEOSANE_NO_VERIFY", "1")
    zoo = Zoo(shutil.copytree(small_zoo.path, tmp_path / "zoo"))
    first, second = zoo.entries[0], zoo.entries[1]
    weights = load_file(str(zoo.path / first.file))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim == 2)
    weights[name][0, 0] = float("inf")
    save_file(weights, str(zoo.path / first.file))
    out = tmp_path / "store"
    code, _, err = run_cli(capsys, "tokenize", "--zoo", str(zoo.path), "--out", str(out))
    assert code == 2 and f"model '{first.id}': tensor '{name}' holds 1 non-finite values (Inf)" in error_line(
        err
    )
    assert not (out / first.file.replace("models/", "tokens/")).exists()

    save_file({}, str(zoo.path / second.file))  # an empty weights file
    code, _, err = run_cli(capsys, "tokenize", "--zoo", str(zoo.path), "--out", str(out), "--allow-nonfinite")
    assert code == 2 and f"model '{second.id}': the state dict is empty" in error_line(err)
    assert TokenStore(out).ids == [
        first.id
    ]  # the good model before it is complete; nothing for the empty one


def test_bench_tokenizer_json(capsys) -> None:
    code, out, _ = run_cli(
        capsys,
        "bench",
        "tokenizer",
        "--source",
        "timm:test_resnet",
        "--random-init",
        "--json",
        "--repeats",
        "2",
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("params", "seconds", "bytes_per_s", "memcpy_bytes_per_s", "ratio", "peak_rss_bytes"):
        assert key in result and result[key] > 0, key
    model = timm.create_model("test_resnet")
    assert result["params"] == sum(t.numel() for t in model.state_dict().values()) and result["repeats"] == 2
    assert result["ratio"] == pytest.approx(result["bytes_per_s"] / result["memcpy_bytes_per_s"])
    code, _, err = run_cli(
        capsys, "bench", "tokenizer", "--source", "timm:test_resnet", "--random-init", "--token-size", "-1"
    )
    assert code == 2 and "token_size must be a positive integer" in error_line(err)
