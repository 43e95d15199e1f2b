"""``geosane generate`` end to end on real (small) timm architectures, and its bad inputs."""

from __future__ import annotations

import json
import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from geosane.autoencoder import ModelConfig, WeightAutoencoder, save_autoencoder
from geosane.errors import GeosaneError
from geosane.generation import generate
from geosane.generation.pipeline import config_from_kwargs
from geosane.io import save_safetensors, sha256_file, write_json
from geosane.tokens.store import tokenize_zoo
from geosane.zoo import ArchSpec, LoadedModel, Zoo
from tests.conftest import run_cli

PROMPT = "timm:test_resnet"  # a real ResNet (with BatchNorm) small enough for tests


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread: None) -> Iterator[None]:
    yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A zoo of three test_resnet models (3 classes), its token store and an autoencoder export."""
    root = tmp_path_factory.mktemp("gen")
    zoo = Zoo.create(root / "zoo")
    arch = ArchSpec("timm", "test_resnet", {"num_classes": 3})
    for seed in range(3):
        torch.manual_seed(seed)
        model = timm.create_model("test_resnet", num_classes=3)
        zoo.add(LoadedModel("timm:test_resnet", model.state_dict(), arch), model_id=f"resnet-{seed}")
    store = tokenize_zoo(zoo, root / "store", token_size=32)
    torch.manual_seed(0)
    ae = WeightAutoencoder(ModelConfig(d_t=32, d_model=32, n_heads=2, n_layers=1, lat_dim=16, window=16,
                                       max_layers=256, max_chunks=256, proj_hidden=16, proj_dim=8))  # fmt: skip
    save_autoencoder(ae, root / "ae.safetensors", extra={"tokenizer": json.dumps(store.settings)})
    return {"root": root, "zoo": root / "zoo", "store": root / "store", "ae": root / "ae.safetensors"}


def _cfg(setup: dict[str, Path], out: Path, select: Path | None, **kwargs: object) -> object:
    defaults = dict(ae=setup["ae"], prompt=PROMPT, out=out, random_init=True, num_candidates=3, top_k=2,
                    select_data=select, select_split="all", image_size=32)  # fmt: skip
    return config_from_kwargs(**{**defaults, **kwargs})


def test_generate_writes_ranked_candidates_card_and_loader(
    setup: dict[str, Path], tiny_image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gen"
    result = generate(_cfg(setup, out, tiny_image_folder, store=setup["store"], anchors=2))
    card = json.loads((out / "model_card.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == [
        ".geosane-out.json", "candidate_1.safetensors", "candidate_2.safetensors", "load_generated.py", "model_card.json",
    ]  # fmt: skip
    assert card == result.card and card["prompt"] == PROMPT and card["seed"] == 0
    assert card["arch"] == {"library": "timm", "name": "test_resnet", "kwargs": {"num_classes": 3}}
    assert len(card["all_proxy_scores"]) == 3 and len(card["kde"]["anchors"]) == 2
    scores = [c["proxy_score"] for c in card["candidates"]]
    assert scores == sorted(scores, reverse=True) and scores[0] == max(card["all_proxy_scores"])
    # tokenized tensors are generated; BN running stats are carried, and recalibrated on the images
    assert "conv1.0.weight" in card["generated_tensors"] and "bn1.weight" in card["generated_tensors"]
    assert "bn1.running_mean" in card["carried_tensors"] and "recalibrated" in card["carried_note"]
    assert card["candidates"][0]["bn_recalibrated_on"] == 24
    prompt = timm.create_model("test_resnet", num_classes=3).state_dict()
    weights = load_file(str(out / "candidate_1.safetensors"))
    assert sorted(weights) == sorted(prompt) and weights["conv1.0.weight"].shape == prompt["conv1.0.weight"].shape
    assert not torch.equal(weights["bn1.running_mean"], torch.zeros_like(prompt["bn1.running_mean"]))
    # the stand-alone helper builds the timm model and loads the weights
    helper = runpy.run_path(str(out / "load_generated.py"))
    model = helper["load"](rank=1)
    assert isinstance(model, torch.nn.Module) and helper["card"]() == card
    torch.testing.assert_close(model.state_dict()["conv1.0.weight"], weights["conv1.0.weight"])


def test_generate_is_seeded_and_adapts_the_stem(setup: dict[str, Path], tmp_path: Path) -> None:
    a = generate(_cfg(setup, tmp_path / "a", None, top_k=1, num_candidates=2, seed=5))
    b = generate(_cfg(setup, tmp_path / "b", None, top_k=1, num_candidates=2, seed=5))
    wa, wb = (load_file(str(r.files[0])) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    six = generate(_cfg(setup, tmp_path / "six", None, top_k=1, num_candidates=1, in_chans=6))
    assert load_file(str(six.files[0]))["conv1.0.weight"].shape[1] == 6
    assert six.card["arch"]["kwargs"]["in_chans"] == 6


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--top-k", "4", "--num-candidates", "3"], "--top-k 4 must be between 1 and --num-candidates"),
        (["--token-size", "64"], "was trained on tokens of size 32, not --token-size 64"),
        (["--prompt", "timm:no_such_architecture_xyz"], "unknown timm model 'no_such_architecture_xyz'"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    setup: dict[str, Path], tiny_image_folder: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str,
) -> None:  # fmt: skip
    out = tmp_path / "never"
    args = ["generate", "--ae", str(setup["ae"]), "--prompt", PROMPT, "--out", str(out), "--random-init",
            "--select-data", str(tiny_image_folder), "--select-split", "all", "--image-size", "32", *extra]  # fmt: skip
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and message in err.replace("\n", " ")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["tiny_folder"]


def test_prompt_whose_architecture_cannot_be_instantiated(setup: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare.safetensors"  # weights without an architecture record
    save_safetensors(timm.create_model("test_resnet").state_dict(), bare)
    with pytest.raises(GeosaneError, match="architecture is unknown"):
        generate(_cfg(setup, tmp_path / "out1", None, prompt=str(bare)))
    hub = tmp_path / "hub"  # a hub-style folder whose config.json names an architecture timm lacks
    save_safetensors(timm.create_model("test_resnet").state_dict(), hub / "model.safetensors")
    write_json(hub / "config.json", {"architecture": "no_such_net_xyz", "num_classes": 1000})
    with pytest.raises(GeosaneError, match="architecture is unknown"):
        generate(_cfg(setup, tmp_path / "out2", None, prompt=str(hub)))
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()


def test_selection_folder_with_fewer_images_than_classes(setup: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    folder = tmp_path / "few"
    for c in "abc":
        (folder / c).mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder / c / "0.png")
    with pytest.raises(GeosaneError, match="has 3 images for 4 classes"):
        generate(_cfg(setup, tmp_path / "out", folder, num_classes=4))
    with pytest.raises(GeosaneError, match="proxy='linear' needs at least 2 per class"):
        generate(_cfg(setup, tmp_path / "out", folder, proxy="linear"))
    with pytest.raises(GeosaneError, match="proxy must be one of knn, linear, got 'nope'"):
        generate(_cfg(setup, tmp_path / "out", folder, proxy="nope"))
    assert not (tmp_path / "out").exists()


def test_run_directory_as_ae_and_a_card_without_selection_data_is_strict_json(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "autoencoder.safetensors").write_bytes(setup["ae"].read_bytes())
    result = generate(_cfg(setup, tmp_path / "out", None, ae=run, top_k=1, num_candidates=1))
    text = (tmp_path / "out" / "model_card.json").read_text()
    assert "NaN" not in text and result.card["candidates"][0]["proxy_score"] is None
    assert result.card["ae_sha256"] == sha256_file(setup["ae"])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_generated_weights(setup: dict[str, Path], tmp_path: Path) -> None:
    """--overwrite replaces an earlier `generate` output, never a user's folder or another command's."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(GeosaneError, match=r"not empty and geosane did not write it \(holds notes.txt\)"):
            generate(_cfg(setup, out, None, top_k=1, num_candidates=1, overwrite=overwrite))
    assert _snapshot(out) == {"notes.txt": b"mine"}
    first = tmp_path / "gen"
    generate(_cfg(setup, first, None, top_k=1, num_candidates=1))
    with pytest.raises(GeosaneError, match="already holds generated weights; overwrite=True"):
        generate(_cfg(setup, first, None, top_k=1, num_candidates=1))
    generate(_cfg(setup, first, None, top_k=1, num_candidates=1, overwrite=True, seed=5))
    assert json.loads((first / "model_card.json").read_text())["seed"] == 5


@pytest.mark.parametrize("target", ["ae_run", "zoo", "store"])
def test_overwrite_never_replaces_an_input(setup: dict[str, Path], tmp_path: Path, target: str) -> None:
    """--out at the --ae run directory, the prompt's zoo or the --store is refused even with --overwrite."""
    run = tmp_path / "ae_run"
    run.mkdir()
    (run / "autoencoder.safetensors").write_bytes(setup["ae"].read_bytes())
    out = {"ae_run": run, "zoo": setup["zoo"], "store": setup["store"]}[target]
    before = _snapshot(out)
    with pytest.raises(GeosaneError, match="is or holds this run's input"):
        generate(_cfg(setup, out, None, ae=run, prompt=f"zoo:{setup['zoo']}#resnet-0", store=setup["store"],
                      top_k=1, num_candidates=1, overwrite=True))  # fmt: skip
    assert _snapshot(out) == before


def test_generate_refuses_another_commands_output(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "finetuned"
    out.mkdir()
    write_json(out / ".geosane-out.json", {"command": "finetune"})
    (out / "metrics.json").write_text("{}")
    with pytest.raises(GeosaneError, match="written by `geosane finetune`, not `geosane generate`"):
        generate(_cfg(setup, out, None, top_k=1, num_candidates=1, overwrite=True))
    assert (out / "metrics.json").read_text() == "{}"


def test_residual_decoding_at_zero_bandwidth_returns_the_prompt_exactly(setup: dict[str, Path], tmp_path: Path) -> None:
    """prompt + decode(z) - decode(z_prompt) with z = z_prompt: the AE's reconstruction error cancels."""
    kwargs = dict(prompt=f"zoo:{setup['zoo']}#resnet-1", bandwidth=0.0, top_k=1, num_candidates=1, bn_batches=0)
    residual = generate(_cfg(setup, tmp_path / "residual", None, decode="residual", **kwargs))
    direct = generate(_cfg(setup, tmp_path / "direct", None, decode="direct", **kwargs))
    zoo_weights = Zoo(setup["zoo"]).load_state_dict("resnet-1")
    got, reconstructed = load_file(str(residual.files[0])), load_file(str(direct.files[0]))
    assert residual.card["decode"] == "residual"
    assert all(torch.equal(got[k], zoo_weights[k]) for k in zoo_weights)
    assert not all(torch.equal(reconstructed[k], zoo_weights[k]) for k in zoo_weights if k.endswith("weight"))
    with pytest.raises(GeosaneError, match="decode must be one of direct, residual, got 'x'"):
        generate(_cfg(setup, tmp_path / "never", None, decode="x"))
    with pytest.raises(GeosaneError, match="bn_batches must be >= 0"):
        generate(_cfg(setup, tmp_path / "never", None, bn_batches=-1))
    assert not (tmp_path / "never").exists()


def test_bad_flags_are_refused_before_torch_is_imported(tmp_path: Path) -> None:
    """`--top-k 5 --num-candidates 2` is checked in a fresh interpreter without importing torch."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    out = tmp_path / "gen"
    code = (
        "import sys\nfrom geosane.cli import main\ntry:\n"
        f"    main(['generate', '--ae', 'x.safetensors', '--prompt', 'timm:resnet18', '--out', {str(out)!r},"
        " '--top-k', '5', '--num-candidates', '2'])\n"
        "except SystemExit as e:\n    print('torch' in sys.modules, e.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={"PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.stdout.split() == ["False", "2"], done.stderr
    assert "--top-k 5 must be between 1 and --num-candidates (2)" in done.stderr and not out.exists()


def test_zoo_models_for_other_classes_anchor_the_layers_they_share(
    setup: dict[str, Path], tiny_image_folder: Path, tmp_path: Path
) -> None:
    """A target with other classes than the zoo (2 vs 3): the zoo models still anchor every layer
    but the head, whose tokens keep the prompt's own latent."""
    import shutil

    shutil.rmtree(tiny_image_folder / "gamma")
    out = tmp_path / "gen"
    generate(_cfg(setup, out, tiny_image_folder, store=setup["store"], anchors=2))
    card = json.loads((out / "model_card.json").read_text())
    assert card["arch"]["kwargs"]["num_classes"] == 2
    anchors = card["kde"]["anchors"]
    assert len(anchors) == 2 and all(0.5 < a["shared_tokens"] < 1.0 for a in anchors)
    assert {a["id"] for a in anchors} <= {"resnet-0", "resnet-1", "resnet-2"}


def test_align_anchors_weight_matches_each_anchor_to_the_prompt(
    setup: dict[str, Path], tiny_image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    generate(_cfg(setup, out, tiny_image_folder, store=setup["store"], anchors=2, align_anchors=True))
    anchors = json.loads((out / "model_card.json").read_text())["kde"]["anchors"]
    assert len(anchors) == 2
    for anchor in anchors:
        fit = anchor["alignment"]
        assert fit["rounds"] >= 1 and fit["similarity_after"] >= fit["similarity_before"]
    code, _, err = run_cli(capsys, "generate", "--ae", str(setup["ae"]), "--prompt", PROMPT, "--random-init",
                           "--out", str(tmp_path / "no"), "--align-anchors")  # fmt: skip
    assert code == 2 and "--align-anchors needs --anchors N" in err and not (tmp_path / "no").exists()
