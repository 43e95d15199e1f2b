from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geosane.errors import GeosaneError
from geosane.io import sha256_file, sha256_tensors
from geosane.tokens import TokenStore, detokenize, tokenize_zoo
from geosane.zoo import Zoo

from .tokens_testutil import assert_bitwise_equal, timm_model


def copy_zoo(zoo: Zoo, dest: Path) -> Zoo:
    shutil.copytree(zoo.path, dest)
    return Zoo(dest)


def mtimes(store: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((store / "tokens").iterdir())}


def test_store_layout_index_and_round_trip(small_zoo: Zoo, small_store: TokenStore) -> None:
    index = json.loads((small_store.path / "index.json").read_text())
    assert (index["format"], index["version"], index["token_size"], index["mode"]) == (
        "geosane-token-store",
        1,
        230,
        "dense",
    )
    assert [r["id"] for r in index["models"]] == small_zoo.ids
    for entry, record in zip(small_zoo, small_store.records, strict=True):
        path = small_store.path / record.file
        assert record.file == f"tokens/{entry.id}.safetensors" and sha256_file(path) == record.sha256
        assert (
            record.zoo_sha256 == entry.sha256 and record.family == entry.family and record.arch == entry.arch
        )
        assert record.properties["accuracy"] == entry.metadata["accuracy"]
        with safe_open(str(path), framework="pt") as f:
            assert {"tokens", "mask", "positions", "layer_type"} <= set(f.keys())
            assert f.get_slice("tokens").get_shape() == [record.num_tokens, 230]
            layout = json.loads(f.metadata()["layout"])
        carried = [t["name"] for t in layout["tensors"] if t["kind"] == "carried"]
        assert all(n.endswith(("running_mean", "running_var", "num_batches_tracked")) for n in carried)
        assert bool(carried) == (entry.family != "vit")  # BatchNorm statistics are carried
        # the stored model detokenizes to exactly the zoo's weights
        assert_bitwise_equal(detokenize(small_store.load(entry.id)), small_zoo.load_state_dict(entry.id))
    assert small_store.total_tokens == sum(r.num_tokens for r in small_store.records)


def test_rerun_skips_finished_models_and_refuses_then_repairs_bad_files(small_zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "store"
    first = tokenize_zoo(small_zoo, out)
    before = mtimes(out)
    tokenize_zoo(small_zoo, out)  # nothing to do
    assert mtimes(out) == before

    victim, deleted = first.records[1], first.records[2]
    data = bytearray((out / victim.file).read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the tokens
    (out / victim.file).write_bytes(bytes(data))
    (out / deleted.file).unlink()
    corrupted = mtimes(out)
    with pytest.raises(GeosaneError, match=rf"the token file of '{victim.id}' .* does not match its recorded SHA-256; "
                       r"nothing was changed.*repair=True to rebuild it"):  # fmt: skip
        tokenize_zoo(small_zoo, out)  # never silently "repaired"
    assert mtimes(out) == corrupted
    store = tokenize_zoo(small_zoo, out, repair=True)
    after = mtimes(out)
    assert after[Path(first.records[0].file).name] == before[Path(first.records[0].file).name]
    assert all(store.verify(i) for i in range(len(store)))
    assert store.records[1].sha256 == victim.sha256 and store.records[2].sha256 == deleted.sha256
    assert not list((out / "tokens").glob(".*.tmp"))  # no temporary files left behind


def test_new_zoo_models_are_added_on_rerun(small_zoo: Zoo, small_store: TokenStore, tmp_path: Path) -> None:
    zoo = copy_zoo(small_zoo, tmp_path / "zoo")
    out = tmp_path / "store"
    shutil.copytree(small_store.path, out)
    before = mtimes(out)
    zoo.add(timm_model("test_efficientnet", num_classes=4), family="efficientnet", metadata={"accuracy": 0.3})
    store = tokenize_zoo(zoo, out)
    assert store.ids == [*small_zoo.ids, "test_efficientnet"]
    assert {k: v for k, v in mtimes(out).items() if k in before} == before


def test_other_settings_on_an_existing_store_are_refused(small_zoo: Zoo, small_store: TokenStore) -> None:
    before = mtimes(small_store.path)
    with pytest.raises(
        GeosaneError, match=r"built with other tokenizer settings: token_size=230 \(now 100\)"
    ):
        tokenize_zoo(small_zoo, small_store.path, token_size=100)
    assert mtimes(small_store.path) == before


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(GeosaneError, match=r"is not a token store \(no index\.json\)"):
        TokenStore(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "geosane-zoo"}))
    with pytest.raises(GeosaneError, match="is not a geosane token store index"):
        TokenStore(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(GeosaneError, match="is not valid JSON"):
        TokenStore(tmp_path)


def test_output_directory_that_is_not_a_store_is_refused(small_zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(GeosaneError, match="is not empty and is not a token store"):
        tokenize_zoo(small_zoo, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_missing_zoo_file_writes_nothing(small_zoo: Zoo, tmp_path: Path) -> None:
    zoo = copy_zoo(small_zoo, tmp_path / "zoo")
    missing = zoo.entries[1]
    (zoo.path / missing.file).unlink()
    out = tmp_path / "store"
    with pytest.raises(
        GeosaneError, match=rf"manifest row '{missing.id}' points to missing file {missing.file}"
    ):
        tokenize_zoo(zoo, out)
    assert not out.exists()
    store = tokenize_zoo(zoo, out, skip_missing=True)
    assert missing.id not in store.ids and len(store) == len(zoo) - 1
    assert not (out / "tokens" / f"{missing.id}.safetensors").exists()


def test_nonfinite_model_stops_the_run_and_writes_nothing_for_it(
    small_zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = copy_zoo(small_zoo, tmp_path / "zoo")
    bad = zoo.entries[1]
    weights = load_file(str(zoo.path / bad.file))
    name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim == 4)
    weights[name].view(-1)[3] = float("nan")
    with safe_open(str(zoo.path / bad.file), framework="pt") as f:
        metadata = f.metadata()
    save_file(weights, str(zoo.path / bad.file), metadata=metadata)
    # re-record the checksum, as if the model had been added with --allow-nonfinite
    monkeypatch.setenv("GEOSANE_NO_VERIFY", "1")
    bad.sha256 = sha256_tensors(zoo.load_state_dict(bad.id))
    monkeypatch.delenv("GEOSANE_NO_VERIFY")
    zoo.save()
    out = tmp_path / "store"
    with pytest.raises(
        GeosaneError, match=rf"model '{bad.id}': tensor '{name}' holds 1 non-finite values \(NaN\)"
    ):
        tokenize_zoo(zoo, out)
    assert not (out / "tokens" / f"{bad.id}.safetensors").exists()
    assert bad.id not in TokenStore(out).ids  # the models before it are complete and indexed
    store = tokenize_zoo(zoo, out, allow_nonfinite=True)
    assert torch.isnan(detokenize(store.load(bad.id))[name]).sum() == 1


def test_row_mode_store(small_zoo: Zoo, tmp_path: Path) -> None:
    store = tokenize_zoo(small_zoo, tmp_path / "store", token_size=64, mode="row", exclude=["head.*"])
    assert (store.token_size, store.mode, store.settings["exclude"]) == (64, "row", ["head.*"])
    tm = store.load("test_vit")
    heads = [n for n in tm.layout if n.startswith("head.")]
    assert heads and all(tm.layout[n].reason == "excluded" for n in heads)
    assert_bitwise_equal(detokenize(tm), small_zoo.load_state_dict("test_vit"))


def test_bad_settings_are_refused_before_writing(small_zoo: Zoo, tmp_path: Path) -> None:
    for kwargs, message in (
        ({"token_size": 0}, "token_size must be a positive integer"),
        ({"mode": "x"}, "unknown tokenization mode"),
    ):
        with pytest.raises(GeosaneError, match=message):
            tokenize_zoo(small_zoo, tmp_path / "store", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "store").exists()


def test_corrupted_zoo_model_is_refused_by_tokenize_and_nothing_is_written(
    small_zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zoo = copy_zoo(small_zoo, tmp_path / "zoo")
    bad = zoo.entries[0]
    data = bytearray((zoo.path / bad.file).read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])  # flip the last 16 bytes of tensor data
    (zoo.path / bad.file).write_bytes(bytes(data))
    out = tmp_path / "store"
    with pytest.raises(GeosaneError, match=rf"weights of '{bad.id}'.*do not match the manifest's SHA-256"):
        tokenize_zoo(zoo, out)
    assert not (out / "tokens" / f"{bad.id}.safetensors").exists()
    monkeypatch.setenv("GEOSANE_NO_VERIFY", "1")  # the documented opt-out for trusted zoos
    assert bad.id in tokenize_zoo(zoo, tmp_path / "store2").ids


def test_corrupted_token_file_and_wrong_index_are_refused_on_read(small_store: TokenStore, tmp_path: Path) -> None:
    shutil.copytree(small_store.path, tmp_path / "s")
    store = TokenStore(tmp_path / "s")
    first = store.records[0]
    path = store.path / first.file
    data = bytearray(path.read_bytes())
    data[-16:] = bytes(b ^ 0xFF for b in data[-16:])
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    for read in (lambda: store.load(first.id), lambda: store.read_window(first.id, 0, 4)):
        with pytest.raises(GeosaneError, match=rf"'{first.id}'.*does not match its recorded SHA-256"):
            read()
    assert path.read_bytes() == before  # reported, never repaired
    assert not TokenStore(tmp_path / "s", check_hashes=False).verify(first.id)

    index = json.loads((store.path / "index.json").read_text())
    index["models"][1]["num_tokens"] += 1
    (store.path / "index.json").write_text(json.dumps(index))
    second = index["models"][1]["id"]
    with pytest.raises(GeosaneError, match=rf"'{second}' has \d+ tokens, the index says"):
        TokenStore(store.path).load(second)


@pytest.mark.parametrize("bad_path", ["../../x.safetensors", "/etc/passwd"])
def test_index_and_manifest_paths_must_stay_inside_their_directory(
    small_zoo: Zoo, small_store: TokenStore, tmp_path: Path, bad_path: str
) -> None:
    shutil.copytree(small_store.path, tmp_path / "s")
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    index["models"][0]["file"] = bad_path
    (tmp_path / "s" / "index.json").write_text(json.dumps(index))
    with pytest.raises(GeosaneError, match=rf"file path '{bad_path}' leaves its directory"):
        TokenStore(tmp_path / "s").load(index["models"][0]["id"])

    zoo = copy_zoo(small_zoo, tmp_path / "zoo")
    manifest = json.loads((zoo.path / "manifest.json").read_text())
    manifest["models"][0]["file"] = bad_path
    (zoo.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GeosaneError, match=rf"file path '{bad_path}' leaves its directory"):
        Zoo(zoo.path).load_state_dict(manifest["models"][0]["id"])
