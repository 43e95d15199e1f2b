from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from geosane.io import atomic_directory, atomic_path, save_safetensors, sha256_tensors, write_json


def test_atomic_path_leaves_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_directory_swaps_a_complete_directory_in_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    import os

    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary directory left behind
    umask = os.umask(0o022)
    try:
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
    finally:
        os.umask(umask)
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert target.stat().st_mode & 0o777 == 0o755  # a plain mkdir's permissions, not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old directory is gone too
    (tmp_path / "file").write_text("a file in the way")
    with atomic_directory(tmp_path / "file") as tmp:
        (tmp / "x").write_text("x")
    assert (tmp_path / "file" / "x").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]


def test_sha256_tensors_depends_on_bits_not_container(tmp_path: Path) -> None:
    a = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    b = {k: v.clone() for k, v in a.items()}
    assert sha256_tensors(a) == sha256_tensors(b)
    b["w"][0, 0] = -0.0  # +0.0 vs -0.0 differ in bits
    assert sha256_tensors(a) != sha256_tensors(b)
    save_safetensors(a, tmp_path / "m.safetensors")
    from safetensors.torch import load_file

    assert sha256_tensors(load_file(tmp_path / "m.safetensors")) == sha256_tensors(a)


def test_atomic_files_get_umask_permissions_not_0600(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "shared.json", {"a": 1})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "s.json", {"r2": float("nan"), "xs": [1.0, math.inf], "t": torch.tensor(-math.inf)})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict constant {c}")) == {
        "r2": None,
        "xs": [1.0, None],
        "t": None,
    }


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("entry", ["load_torch", "load_autoencoder"])
def test_a_malicious_checkpoint_is_refused_unrun_without_unsafe_advice(tmp_path: Path, entry: str) -> None:
    from geosane.autoencoder import load_autoencoder
    from geosane.errors import UnsafeCheckpointError
    from geosane.io import load_torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "step-0000001.ckpt"
    torch.save({"state_dict": {}, "x": _Payload(str(marker))}, evil)
    with pytest.raises(UnsafeCheckpointError) as info:
        (load_torch if entry == "load_torch" else load_autoencoder)(evil)
    message = str(info.value)
    assert message.startswith(f"refusing to load {evil}") and "arbitrary code" in message
    assert "weights_only" not in message  # torch's advice (weights_only=False) would run the payload
    assert not marker.exists()
