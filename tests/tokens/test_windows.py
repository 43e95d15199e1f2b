from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from geosane.errors import GeosaneError
from geosane.tokens import ModelWindows, TokenStore, WindowDataset, detokenize, tokenize_zoo
from geosane.zoo import LoadedModel, Zoo

ITEM = {
    "tokens": (torch.float32, lambda w, d: (w, d)),
    "mask": (torch.bool, lambda w, d: (w, d)),
    "positions": (torch.int64, lambda w, d: (w, 3)),
    "layer_type": (torch.int64, lambda w, d: (w,)),
    "valid": (torch.bool, lambda w, d: (w,)),
    "model_index": (torch.int64, lambda w, d: ()),
    "start": (torch.int64, lambda w, d: ()),
}


def check_item(item: dict[str, torch.Tensor], window: int, token_size: int) -> None:
    assert set(item) == set(ITEM)
    for key, (dtype, shape) in ITEM.items():
        assert item[key].dtype == dtype and tuple(item[key].shape) == shape(window, token_size), key


def test_items_match_the_stored_tokens(small_store: TokenStore) -> None:
    ds = WindowDataset(small_store, window=32, seed=1)
    full = {i: small_store.load(i) for i in range(len(small_store))}
    for index in range(0, len(ds), max(1, len(ds) // 25)):
        item = ds[index]
        check_item(item, 32, 230)
        model, start = int(item["model_index"]), int(item["start"])
        assert (model, start) == ds.locate(index)
        tm = full[model]
        assert 0 <= start <= tm.num_tokens - 32 and bool(item["valid"].all())
        assert torch.equal(item["tokens"], tm.tokens[start : start + 32])
        assert torch.equal(item["mask"], tm.mask[start : start + 32])
        assert torch.equal(item["positions"], tm.positions[start : start + 32])
        assert torch.equal(item["layer_type"], tm.layer_type[start : start + 32])
        assert torch.equal(item["positions"][:, 0], torch.arange(start, start + 32))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["tokens"].shape == (4, 32, 230) and batch["model_index"].shape == (4,)
    # a worker process opens its own memory maps and reads the same windows
    in_worker = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    assert all(torch.equal(in_worker[k], batch[k]) for k in batch)


def test_models_shorter_than_the_window_are_padded(small_store: TokenStore) -> None:
    shortest = min(range(len(small_store)), key=lambda i: small_store.records[i].num_tokens)
    n = small_store.records[shortest].num_tokens
    window = n + 50
    ds = WindowDataset(small_store, window=window, models=[shortest], num_samples=3)
    item = ds[0]
    check_item(item, window, 230)
    assert int(item["start"]) == 0 and int(item["model_index"]) == shortest
    assert item["valid"].tolist() == [True] * n + [False] * 50
    assert not item["tokens"][n:].any() and not item["mask"][n:].any() and not item["positions"][n:].any()
    assert torch.equal(item["tokens"][:n], small_store.load(shortest).tokens)


def test_windows_are_deterministic_given_seed_and_epoch(small_store: TokenStore) -> None:
    a, b = WindowDataset(small_store, 16, seed=3), WindowDataset(small_store, 16, seed=3)
    assert torch.equal(a.models, b.models) and torch.equal(a.starts, b.starts)
    assert torch.equal(a[5]["tokens"], b[5]["tokens"])
    c = WindowDataset(small_store, 16, seed=4)
    assert not torch.equal(a.starts, c.starts)
    a.set_epoch(1)
    assert not torch.equal(a.starts, b.starts)
    b.set_epoch(1)
    assert torch.equal(a.starts, b.starts)


def test_sampling_uniform_over_tokens_or_models(small_store: TokenStore) -> None:
    counts = torch.tensor(small_store.num_tokens, dtype=torch.float64)
    n = 30_000
    by_tokens = WindowDataset(small_store, 8, sampling="tokens", num_samples=n, seed=0)
    freq = torch.bincount(by_tokens.models, minlength=len(small_store)).double() / n
    expected = counts / counts.sum()
    sigma = (expected * (1 - expected) / n).sqrt()
    assert bool(((freq - expected).abs() < 5 * sigma).all()), (freq, expected)
    # starts are uniform over each model's valid range
    for m in range(len(small_store)):
        starts = by_tokens.starts[by_tokens.models == m].double()
        span = counts[m] - 8
        assert starts.min() >= 0 and starts.max() <= span
        assert abs(starts.mean() - span / 2) < 5 * span / (12 * len(starts)) ** 0.5

    by_models = WindowDataset(small_store, 8, sampling="models", num_samples=n, seed=0)
    freq = torch.bincount(by_models.models, minlength=len(small_store)).double() / n
    p = 1 / len(small_store)
    assert bool(((freq - p).abs() < 5 * (p * (1 - p) / n) ** 0.5).all()), freq
    assert len(WindowDataset(small_store, 100)) == -(-small_store.total_tokens // 100)


def test_model_windows_tile_a_model_with_halos(small_store: TokenStore) -> None:
    tm = small_store.load(1)
    windows = ModelWindows(small_store, small_store.ids[1], window=64, halo=8)
    assert len(windows) == -(-tm.num_tokens // 48)
    first = windows[0]
    assert int(first["start"]) == -8 and first["valid"].tolist()[:9] == [False] * 8 + [True]
    centres = torch.cat([windows[i]["tokens"][8:56] for i in range(len(windows))])
    valid = torch.cat([windows[i]["valid"][8:56] for i in range(len(windows))])
    assert torch.equal(centres[valid], tm.tokens) and int(valid.sum()) == tm.num_tokens
    plain = WindowDataset(small_store, 64).model_windows(1)
    assert len(plain) == -(-tm.num_tokens // 64) and int(plain[0]["start"]) == 0


def test_items_are_private_copies(small_store: TokenStore) -> None:
    ds = WindowDataset(small_store, 16, seed=2)
    original = ds[0]["tokens"].clone()
    ds[0]["tokens"].mul_(0)  # e.g. in-place noise augmentation
    assert torch.equal(ds[0]["tokens"], original)


def test_dataset_pickles_without_open_files(small_store: TokenStore) -> None:
    ds = WindowDataset(small_store, 16)
    ds[0]
    assert small_store._handles  # a memory-mapped file is open
    clone = pickle.loads(pickle.dumps(ds))
    assert not clone.store._handles and torch.equal(clone[0]["tokens"], ds[0]["tokens"])


def _anon_rss() -> int:
    """Anonymous resident memory: what the process holds itself (file-backed map pages excluded,
    as the kernel may map them in large folios and reclaims them under memory pressure)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


def _memory_figures(tmp_path: Path) -> dict[str, object]:
    """Build a ~96 MB store, read 100 windows from it, then load the whole model; the memory each
    step added. Runs in a fresh process: freed memory that earlier tests left in this process's
    allocator would otherwise absorb the control allocation below without any RSS growth."""
    torch.set_num_threads(1)
    zoo = Zoo.create(tmp_path / "zoo")
    big = {"body.weight": torch.randn(6000, 4000), "body.bias": torch.randn(6000)}  # ~96 MB
    zoo.add(LoadedModel(source="synthetic", state_dict=big), model_id="big")
    del big
    store = tokenize_zoo(zoo, tmp_path / "store")
    file_bytes = store.file(0).stat().st_size
    ds = WindowDataset(tmp_path / "store", window=64, seed=0)
    ds[0]
    before = _anon_rss()
    items = [ds[i] for i in range(0, len(ds), len(ds) // 100)]
    grown = _anon_rss() - before
    kept = sum(sum(v.numel() * v.element_size() for v in item.values()) for item in items)
    model_sized = [  # the dataset should hold no model-sized tensor: only window arrays
        name
        for obj in (ds, ds.store)
        for name, value in vars(obj).items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 64 * 230
    ]
    before = _anon_rss()
    weights = detokenize(ds.store.load(0))
    return {
        "file_bytes": file_bytes, "grown": grown, "kept": kept, "model_sized": model_sized,
        "materialised": _anon_rss() - before, "shape": tuple(weights["body.weight"].shape),
    }  # fmt: skip


def test_items_read_only_their_rows_from_a_memory_mapped_store(tmp_path: Path) -> None:
    if "RssAnon:" not in Path("/proc/self/status").read_text():
        pytest.skip("needs /proc/self/status RssAnon to measure memory")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        m = pool.apply(_memory_figures, (tmp_path,))
    file_bytes, grown, kept = m["file_bytes"], m["grown"], m["kept"]
    assert file_bytes > 100e6
    # reading the whole model would add > file_bytes / 2 (checked below), so a quarter of the file
    # separates reading only the windows' rows from reading everything
    assert kept < file_bytes / 8 and grown < file_bytes / 4, (grown, kept, file_bytes)
    assert not m["model_sized"], m["model_sized"]
    # the measurement is sensitive: materialising the whole model does show up
    assert m["materialised"] > file_bytes / 2 and m["shape"] == (6000, 4000)


def test_bad_window_arguments(small_store: TokenStore, tmp_path: Path) -> None:
    with pytest.raises(GeosaneError, match="window must be a positive integer"):
        WindowDataset(small_store, 0)
    with pytest.raises(GeosaneError, match="unknown window sampling 'layers'"):
        WindowDataset(small_store, 8, sampling="layers")  # type: ignore[arg-type]
    with pytest.raises(GeosaneError, match="halo must be >= 0 and leave a centre"):
        ModelWindows(small_store, 0, 16, halo=8)
    with pytest.raises(GeosaneError, match="no model 'nope' in token store"):
        WindowDataset(small_store, 8, models=["nope"])
    with pytest.raises(GeosaneError, match="is not a token store"):
        WindowDataset(tmp_path, 8)
