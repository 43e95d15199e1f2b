"""ModelCard: the one writer and reader of ``model_card.json``; older cards still read."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from geosane.downstream import read_generated_dir
from geosane.errors import GeosaneError
from geosane.generation.card import CardCandidate, ModelCard

# a card exactly as `geosane generate` wrote it before ModelCard (every key, in its order)
CURRENT_LAYOUT = {
    "format": "geosane-generated",
    "geosane_version": "0.1.0",
    "prompt": "zoo:/zoo#base",
    "prompt_info": {"pretrained": True, "in_chans": 3, "num_classes": 7},
    "arch": {"library": "timm", "name": "test_resnet", "kwargs": {"num_classes": 7}},
    "ae_checkpoint": "/runs/ae/autoencoder.safetensors",
    "ae_sha256": "ab" * 32,
    "token_size": 64,
    "mode": "dense",
    "seed": 0,
    "decode": "direct",
    "kde": {"mode": "token", "bandwidth": 0.2, "anchors": [
        {"id": "child-0", "distance": 0.5, "shared_tokens": 0.9, "alignment": {}}]},
    "num_candidates": 3,
    "top_k": 2,
    "proxy": "knn",
    "select_data": "/data/select",
    "select_split": "all",
    "normalization": "dataset",
    "split_seed": 0,
    "image_size": 16,
    "prompt_proxy_score": 0.4,
    "all_proxy_scores": [0.5, None, 0.3],
    "candidates": [
        {"rank": 1, "file": "candidate_1.safetensors", "candidate_index": 0, "proxy_score": 0.5, "proxy": "knn",
         "bn_recalibrated_on": 21},
        {"rank": 2, "file": "candidate_2.safetensors", "candidate_index": 2, "proxy_score": 0.3, "proxy": "knn",
         "bn_recalibrated_on": 21},
    ],
    "generate_only": [],
    "generated_tensors": ["conv1.weight", "fc.weight"],
    "prompt_tensors": [],
    "carried_tensors": ["bn1.running_mean"],
    "carried_note": "carried tensors are copied from the prompt",
}  # fmt: skip


def test_the_card_round_trips_to_the_same_json_keys_in_the_same_order() -> None:
    card = ModelCard.from_dict(CURRENT_LAYOUT)
    assert card.candidates[0] == CardCandidate(1, "candidate_1.safetensors", 0, 0.5, "knn", 21)
    assert card.kde["anchors"][0]["id"] == "child-0" and card.token_size == 64 and not card.prompt_is_random_init
    written = card.to_dict()
    assert written == CURRENT_LAYOUT and list(written) == list(CURRENT_LAYOUT)
    assert json.loads(json.dumps(written)) == written  # strict JSON: lists, no tuples, no NaN


def test_an_older_card_with_nan_scores_and_fewer_fields_reads() -> None:
    old = {
        "format": "geosane-generated", "prompt": "timm:resnet18", "prompt_info": {"pretrained": False},
        "arch": {"library": "timm", "name": "resnet18", "kwargs": {}}, "seed": 3, "proxy": "linear",
        "candidates": [{"rank": 2, "file": "b.safetensors", "proxy_score": float("nan")},
                       {"rank": 1, "file": "a.safetensors", "proxy_score": 0.7}],
        "generated_tensors": ["conv1.weight"], "note": "trained on the wrong split", "made_by": "a user",
    }  # fmt: skip
    card = ModelCard.from_dict(old)
    assert [c.rank for c in card.ranked()] == [1, 2]
    assert card.ranked()[1].proxy_score is None and card.ranked()[0].proxy == "linear"  # the card's proxy
    assert card.prompt_is_random_init and card.decode is None and card.prompt_tensors == []
    assert card.note == "trained on the wrong split" and card.extra == {"made_by": "a user"}
    written = card.to_dict()
    assert written["note"] == old["note"] and written["made_by"] == "a user" and written["seed"] == 3
    assert not any(isinstance(c["proxy_score"], float) and math.isnan(c["proxy_score"]) for c in written["candidates"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "geosane-zoo"}, r"card\.json is not a `geosane generate` model card \(format 'geosane-zoo'\)"),
        ({"arch": None}, r"card\.json: 'arch' must be \{library, name, kwargs\}"),
        ({"candidates": []}, r"card\.json: 'candidates' must be a non-empty list"),
        ({"candidates": [{"rank": 1}]}, r"card\.json: candidates\[0\] needs 'rank' and 'file'"),
    ],
)
def test_bad_cards_are_refused_naming_the_problem(change: dict[str, object], message: str) -> None:
    with pytest.raises(GeosaneError, match=message):
        ModelCard.from_dict({**CURRENT_LAYOUT, **change}, "card.json")


def test_the_downstream_reader_reads_an_old_card_from_disk(tmp_path: Path) -> None:
    for name in ("candidate_1.safetensors", "candidate_2.safetensors"):
        (tmp_path / name).write_bytes(b"")
    card = {**CURRENT_LAYOUT, "candidates": [{**c, "proxy_score": float("nan")} for c in CURRENT_LAYOUT["candidates"]]}
    (tmp_path / "model_card.json").write_text(json.dumps(card))  # NaN, as cards before null scores held
    parsed = read_generated_dir(tmp_path)
    assert parsed.prompt == "zoo:/zoo#base" and parsed.arch.name == "test_resnet"
    assert [c.proxy_score for c in parsed.candidates] == [None, None]
    assert parsed.card == json.loads((tmp_path / "model_card.json").read_text())
    assert parsed.model_card is not None and parsed.model_card.generated_tensors == parsed.generated_tensors
