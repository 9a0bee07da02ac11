"""Tests of common/tools/tiny_backbone.py: the tiny backbone loads through the Auto classes, runs and is reproducible."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

from common.tools.demo import make_demo_frames
from common.tools.tiny_backbone import SPECIAL_TOKENS, build_tiny_backbone, main

HIDDEN_SIZE = 32


@pytest.fixture(scope="module")
def texts() -> list[str]:
    frames = make_demo_frames(seed=5, n_train=120, n_test=4, n_corpus_only=60)
    return frames["train"]["full_text"].tolist() + frames["persuade"]["full_text"].tolist()


@pytest.fixture(scope="module")
def backbone(texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("backbone") / "tiny"
    return build_tiny_backbone(texts, out, vocab_size=800, hidden_size=HIDDEN_SIZE, seed=1)


def test_tokenizer_loads_with_special_tokens(backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 0
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token, tokenizer.unk_token) == (
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[UNK]",
    )
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.model_max_length == 512
    assert len(tokenizer) <= 800


def test_tokenizer_round_trip_drops_newlines(backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    ids = tokenizer("Venus is the planet.\n\nNASA sent  probes\xa0there.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert ids == tokenizer("Venus is the planet. NASA sent probes there.")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Venus is the planet. NASA sent probes there."
    pair = tokenizer("the planet", "the surface")["input_ids"]
    assert pair.count(tokenizer.sep_token_id) == 2 and pair[0] == tokenizer.cls_token_id


def test_model_config_is_deberta_v3_like(backbone: Path) -> None:
    config = AutoConfig.from_pretrained(backbone)
    assert config.model_type == "deberta-v2"
    assert config.relative_attention and not config.position_biased_input
    assert list(config.pos_att_type) == ["p2c", "c2p"]
    assert config.position_buckets == 64 and config.pad_token_id == 0
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(backbone))


def test_model_forward(backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model, info = AutoModel.from_pretrained(backbone, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = tokenizer(
        ["The Face on Mars is a landform.", "Driverless cars"], padding=True, return_tensors="pt"
    )
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], HIDDEN_SIZE)
    assert torch.isfinite(hidden).all()


def test_masked_lm_loads(backbone: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    model = AutoModelForMaskedLM.from_pretrained(backbone)
    batch = tokenizer(["Venus has a [MASK] atmosphere."], return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def test_same_texts_and_seed_give_identical_files(texts: list[str], backbone: Path, tmp_path: Path) -> None:
    again = build_tiny_backbone(texts, tmp_path / "again", vocab_size=800, hidden_size=HIDDEN_SIZE, seed=1)
    names = sorted(p.name for p in backbone.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names
    for name in names:
        assert (backbone / name).read_bytes() == (again / name).read_bytes(), name
    other_seed = build_tiny_backbone(
        texts, tmp_path / "seed2", vocab_size=800, hidden_size=HIDDEN_SIZE, seed=2
    )
    assert (other_seed / "tokenizer.json").read_bytes() == (backbone / "tokenizer.json").read_bytes()
    assert (other_seed / "model.safetensors").read_bytes() != (backbone / "model.safetensors").read_bytes()


def test_default_size_is_tiny_and_command_line_works(texts: list[str], tmp_path: Path) -> None:
    pd.DataFrame({"essay_id": range(len(texts)), "full_text": texts}).to_csv(
        tmp_path / "essays.csv", index=False
    )
    out = tmp_path / "cli"
    main(["--train-csv", str(tmp_path / "essays.csv"), "--out", str(out)])
    assert sum(p.stat().st_size for p in out.iterdir()) < 2_000_000
    assert AutoTokenizer.from_pretrained(out).cls_token == "[CLS]"
    assert not list(tmp_path.glob("*.tmp-*"))


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one text"):
        build_tiny_backbone([], tmp_path / "empty")
    pd.DataFrame({"text": ["a"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="full_text"):
        main(["--train-csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "x")])
