"""End to end through the CLI: zoo build -> tokenize -> train -> embed/probe; bench; CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli


def test_tiny_autoencoder_reconstructs_its_training_models(trained_tiny: tuple[Path, float]) -> None:
    out, seconds = trained_tiny
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 400 and len(summary["train_models"]) == 5 and summary["val_models"] == []
    assert summary["train"]["r2"] >= 0.9, summary["train"]
    assert all(r2 > 0.8 for r2 in summary["train"]["per_model"].values()), summary["train"]["per_model"]
    assert seconds < 120  # ~50 s on 2 busy cores; the generous bound only catches pathologies
    assert (out / "autoencoder.safetensors").is_file() and (out / "logs" / "metrics.csv").is_file()


def test_export_records_the_stores_tokenizer_settings(trained_tiny: tuple[Path, float], tiny_zoo_store: Path) -> None:
    from geosane.autoencoder import load_autoencoder
    from geosane.generation.pipeline import tokenizer_settings
    from geosane.tokens import TokenStore

    out, _ = trained_tiny
    ae, metadata = load_autoencoder(out / "autoencoder.safetensors")
    store = TokenStore(tiny_zoo_store)
    assert json.loads(metadata["tokenizer"]) == store.settings
    assert metadata["steps"] == "400" and json.loads(metadata["config"])["d_t"] == 32
    settings = tokenizer_settings(ae, metadata)  # what generation re-tokenizes prompts with
    assert settings["token_size"] == 32 and settings["mode"] == store.mode
    assert settings.get("buffers") == store.settings.get("buffers")
    checkpoint = sorted((out / "checkpoints").glob("*.ckpt"))[-1]  # a training checkpoint knows its store too
    _, from_checkpoint = load_autoencoder(checkpoint)
    assert json.loads(from_checkpoint["tokenizer"]) == store.settings


def test_embed_and_probe_accuracy(trained_tiny: tuple[Path, float], tiny_zoo_store: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = trained_tiny
    target = tmp_path / "emb.safetensors"
    code, stdout, _ = run_cli(capsys, "embed", "--ae", str(out), "--store", str(tiny_zoo_store), "--out", str(target),
                           "--probe-property", "accuracy", "--json")
    assert code == 0
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["models"] == 5 and target.is_file()
    for kind in ("mean", "stats", "weight_stats"):
        assert result["probe"]["accuracy"][kind]["models"] == 5
        assert result["probe"]["accuracy"][kind]["r2"] == result["probe"]["accuracy"][kind]["r2"]  # not NaN
    from safetensors import safe_open

    with safe_open(str(target), framework="pt") as f:
        index = json.loads((tiny_zoo_store / "index.json").read_text())
        assert json.loads(f.metadata()["ids"]) == [m["id"] for m in index["models"]]
        mean, stats = f.get_tensor("mean"), f.get_tensor("stats")
    assert mean.shape == (5, 32) and stats.shape == (5, 7 * 32)
    code, _, err = run_cli(capsys, "embed", "--ae", str(out), "--store", str(tiny_zoo_store), "--out",
                        str(tmp_path / "bad.safetensors"), "--probe-property", "no_such_property")
    assert code == 2 and "no numeric property 'no_such_property'" in err
    assert not (tmp_path / "bad.safetensors").exists()


def test_bench_train_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "bench", "train", "--config", "tiny", "--steps", "2", "--warmup", "1", "--json")
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["tokens_per_s"] > 0 and result["peak_rss_bytes"] > 0
    assert 0 < result["optimizer_seconds"] < result["step_seconds"]
    assert result["tokens_per_s"] == pytest.approx(8 * 32 / result["step_seconds"])
    assert result["config"]["model"]["window"] == 32 and result["config"]["batch_size"] == 8


def test_cli_bad_input_exits_2_and_writes_nothing(random_store: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={out}", "model.d_t=230")
    assert code == 2 and "token size 32 but the autoencoder expects d_t=230" in err
    code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={out}", "trian.lr=1")
    assert code == 2 and "unknown config key 'trian'" in err
    code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={out}", "--resume")
    assert code == 2 and "nothing to resume" in err
    for bad, message in [("train.lr=-1", "train.lr must be a positive number, got -1"),
                         ("train.betas=[0.9,1.5]", "train.betas must be two numbers in [0, 1)")]:  # fmt: skip
        code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={out}", bad)
        assert code == 2 and message in err, err
    assert not out.exists()


def test_train_refuses_a_folder_it_did_not_write(random_store: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """train.out holding a user's files, or the token store itself, is refused before anything is written."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={out}")
    assert code == 2 and "geosane did not write it (holds notes.txt)" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    before = sorted(p.name for p in random_store.rglob("*"))
    code, _, err = run_cli(capsys, "train", "tiny", f"data.store={random_store}", f"train.out={random_store}")
    assert code == 2 and "is or holds this run's input data.store" in err
    assert sorted(p.name for p in random_store.rglob("*")) == before
