"""TokenizerSettings: one typed record of how a store was tokenized, and old indexes still open."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geosane.errors import GeosaneError
from geosane.tokens import (
    DEFAULT_BUFFER_PATTERNS,
    TokenizerError,
    TokenizerSettings,
    TokenStore,
    detokenize,
    tokenize_zoo,
    write_store_index,
)
from geosane.zoo import Zoo

from .tokens_testutil import assert_bitwise_equal


def test_settings_round_trip_through_their_json_record() -> None:
    settings = TokenizerSettings(64, "row", include=["*.weight"], exclude=["head.*"], buffers=[])
    assert settings.include == ("*.weight",) and settings.exclude == ("head.*",) and settings.buffers == ()
    record = settings.to_dict()
    assert record == {"token_size": 64, "mode": "row", "include": ["*.weight"], "exclude": ["head.*"], "buffers": []}
    assert TokenizerSettings.from_dict(record) == settings
    assert TokenizerSettings.from_json(settings.to_json()) == settings
    assert hash(settings) == hash(TokenizerSettings.from_dict(record))


def test_missing_keys_of_older_records_mean_the_defaults_and_an_empty_buffer_list_stays_empty() -> None:
    old = TokenizerSettings.from_dict({"token_size": 32})
    assert old == TokenizerSettings(32, "dense", None, (), DEFAULT_BUFFER_PATTERNS)
    assert TokenizerSettings.from_dict({"token_size": 32, "buffers": None}).buffers == DEFAULT_BUFFER_PATTERNS
    assert TokenizerSettings.from_dict({"token_size": 32, "buffers": []}).buffers == ()
    assert TokenizerSettings.from_dict({"token_size": 32, "exclude": None}).exclude == ()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"mode": "dense"}, r"need a 'token_size'"),
        ({"token_size": 0}, r"token_size must be a positive integer, got 0"),
        ({"token_size": True}, r"token_size must be a positive integer, got True"),
        ({"token_size": 8, "mode": "sparse"}, r"unknown tokenization mode 'sparse' \(choose from dense, row\)"),
        ({"token_size": 8, "exclude": "head.*"}, r"'exclude' must be a list of glob patterns, got 'head\.\*'"),
    ],
)
def test_bad_records_are_refused_with_the_problem_named(record: dict[str, object], message: str) -> None:
    with pytest.raises(TokenizerError, match=message):
        TokenizerSettings.from_dict(record)


def test_differences_name_each_changed_setting() -> None:
    a, b = TokenizerSettings(230), TokenizerSettings(100, exclude=["x"])
    assert a.differences(b) == ["token_size=230 (now 100)", "exclude=[] (now ['x'])"]
    assert a.differences(TokenizerSettings()) == []


def test_the_store_records_its_settings_in_the_index(small_store: TokenStore) -> None:
    index = json.loads((small_store.path / "index.json").read_text())
    assert list(index)[:7] == ["format", "version", "token_size", "mode", "include", "exclude", "buffers"]
    assert small_store.tokenizer == TokenizerSettings() == TokenizerSettings.from_dict(index)
    assert small_store.settings == TokenizerSettings().to_dict()


def _old_layout_index(store: TokenStore, **settings: object) -> str:
    """``index.json`` exactly as geosane wrote it before TokenizerSettings (the literal layout that
    ``build_permuted_variants`` also wrote by hand): format, version, the settings, models."""
    from dataclasses import asdict

    data = {"format": "geosane-token-store", "version": 1, **settings, "models": [asdict(r) for r in store.records]}
    return json.dumps(data, indent=2)


def test_the_public_writer_writes_the_old_layout_byte_for_byte(small_store: TokenStore, tmp_path: Path) -> None:
    old = _old_layout_index(
        small_store, token_size=230, mode="dense", include=None, exclude=[], buffers=list(DEFAULT_BUFFER_PATTERNS)
    )
    write_store_index(tmp_path, small_store.tokenizer, small_store.records)
    assert json.loads((tmp_path / "index.json").read_text()) == json.loads(old)
    assert (tmp_path / "index.json").read_text().strip() == old.strip()


@pytest.mark.parametrize("layout", ["full", "no-patterns"])
def test_an_index_in_the_old_layout_opens_loads_and_resumes(
    small_zoo: Zoo, small_store: TokenStore, tmp_path: Path, layout: str
) -> None:
    store_dir = tmp_path / "old"
    shutil.copytree(small_store.path, store_dir)
    if layout == "full":
        text = _old_layout_index(
            small_store, token_size=230, mode="dense", include=None, exclude=[], buffers=list(DEFAULT_BUFFER_PATTERNS)
        )
    else:  # an early index: only the token size and mode were recorded
        text = _old_layout_index(small_store, token_size=230, mode="dense")
    (store_dir / "index.json").write_text(text)
    old = TokenStore(store_dir)
    assert old.tokenizer == TokenizerSettings() and (old.token_size, old.mode) == (230, "dense")
    first = small_zoo.ids[0]
    assert_bitwise_equal(detokenize(old.load(first)), small_zoo.load_state_dict(first))
    # the same (default) settings: a rerun into it skips every model and rewrites nothing
    before = {p.name: p.stat().st_mtime_ns for p in (store_dir / "tokens").iterdir()}
    again = tokenize_zoo(small_zoo, store_dir)
    assert again.ids == small_zoo.ids
    assert {p.name: p.stat().st_mtime_ns for p in (store_dir / "tokens").iterdir()} == before


def test_an_index_with_invalid_settings_is_refused_in_one_line(small_store: TokenStore, tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(_old_layout_index(small_store, mode="dense"))
    with pytest.raises(GeosaneError, match=r"index\.json: invalid tokenizer settings \(tokenizer settings need a 'token_size'"):
        TokenStore(tmp_path)
