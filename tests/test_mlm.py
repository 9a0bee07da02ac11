"""MLM domain adaptation (common/train/mlm.py, mlm_corpus.py, mlm_loop.py): chunking, the held-out split, masking,
fixed-mask evaluation, training, saving."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from common.models.tokenization import NEWLINE_TOKEN, load_tokenizer, newline_safe, tokenize_essays
from common.train import mlm_loop
from common.train.mlm import METRICS_FILE, adapt_backbone, load_masked_lm
from common.train.mlm_corpus import (
    IGNORE_INDEX,
    MaskingCollator,
    essay_chunks,
    fixed_mask_batches,
    held_out_essays,
)
from common.train.mlm_loop import masked_lm_loss
from tests.conftest import BACKBONE, REPO

FAST = {"max_length": 64, "batch_size": 16, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: as fast for the tiny model, and immune to a busy shared machine's other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def essays() -> list[str]:
    return pd.read_csv(REPO / "input" / "train.csv")["full_text"].tolist()[:200]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BACKBONE, add_newline_tokens=True)


@pytest.fixture(scope="module")
def chunks(tokenizer, essays):
    return essay_chunks(tokenizer, essays, max_length=128)


@pytest.fixture(scope="module")
def adapted(essays, tmp_path_factory):
    """60 essays, 3 epochs at a learning rate the tiny random model needs."""
    out = tmp_path_factory.mktemp("mlm") / "adapted"
    torch.set_num_threads(1)
    metrics = adapt_backbone(BACKBONE, essays[:60], out, epochs=3, lr=1e-3, held_out_share=0.2, seed=0, **FAST)
    return out, metrics


def test_chunks_hold_every_token_once_and_start_like_training(tokenizer, essays, chunks):
    assert max(len(ids) for ids in chunks.input_ids) == 128
    assert np.all(np.diff(chunks.essay_index) >= 0) and set(chunks.essay_index) == set(range(len(essays)))
    firsts = np.flatnonzero(np.r_[True, np.diff(chunks.essay_index) > 0])
    assert [chunks.input_ids[i] for i in firsts] == tokenize_essays(tokenizer, essays, 128)
    newline_id = tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN)
    for essay in (0, 42, 199):  # essays with paragraph breaks
        rows = np.flatnonzero(chunks.essay_index == essay)
        body = [t for i in rows for t, w in zip(chunks.input_ids[i], chunks.words[i], strict=True) if w >= 0]
        whole = tokenizer(newline_safe(essays[essay]), add_special_tokens=False)["input_ids"]
        assert body == whole and newline_id in body
        for i in rows:  # framed like a whole essay: [CLS] ... [SEP]
            assert chunks.input_ids[i][0] == tokenizer.cls_token_id and chunks.input_ids[i][-1] == tokenizer.sep_token_id
            assert chunks.words[i][0] == chunks.words[i][-1] == -1


def test_words_follow_the_tokenizers_word_boundaries(tokenizer):
    chunk = essay_chunks(tokenizer, ["Autonomous cars,\n\nreally."], max_length=64)
    tokens = tokenizer.convert_ids_to_tokens(chunk.input_ids[0])
    words = chunk.words[0]
    assert words[0] == words[-1] == -1
    starts = [t for t, w, prev in zip(tokens[1:-1], words[1:-1], words[:-2], strict=True) if w != prev]
    assert starts[0].startswith("▁") and starts.count(NEWLINE_TOKEN) == 2  # each newline is a word of its own
    assert len(starts) == 5  # "Autonomous", "cars,", "\n", "\n", "really."


def test_held_out_split_is_by_essay_seeded_and_leaves_training_essays():
    mask = held_out_essays(100, 0.1, seed=3)
    assert mask.sum() == 10 and np.array_equal(mask, held_out_essays(100, 0.1, seed=3))
    assert not np.array_equal(mask, held_out_essays(100, 0.1, seed=4))
    assert held_out_essays(3, 0.01, seed=0).sum() == 1 and held_out_essays(2, 0.9, seed=0).sum() == 1
    assert not held_out_essays(5, 0.0, seed=0).any()
    with pytest.raises(ValueError, match="held_out_share"):
        held_out_essays(10, 1.0, seed=0)


def masked_batches(tokenizer, chunks, whole_word_masking: bool) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
    """(masked batch, original ids, word numbers) for every chunk, 32 chunks a batch, padded alike."""
    collator = MaskingCollator(tokenizer, 0.15, whole_word_masking, seed=0)
    found = []
    for start in range(0, len(chunks), 32):
        items = chunks.items(range(start, min(start + 32, len(chunks))))
        batch = collator(items)
        width = batch["input_ids"].shape[1]
        original = torch.tensor([x["input_ids"] + [tokenizer.pad_token_id] * (width - len(x["input_ids"])) for x in items])
        words = torch.tensor([x["words"] + [-1] * (width - len(x["words"])) for x in items])
        assert width % 8 == 0 and torch.equal(batch["attention_mask"].bool(), original != tokenizer.pad_token_id)
        found.append((batch, original, words))
    return found


def test_token_masking_picks_mlm_probability_of_the_text_tokens(tokenizer, chunks):
    found = masked_batches(tokenizer, chunks, whole_word_masking=False)
    picked = torch.cat([(b["labels"] != IGNORE_INDEX).flatten() for b, _, _ in found])
    text = torch.cat([(words >= 0).flatten() for _, _, words in found])
    assert not picked[~text].any()  # special tokens and padding are never picked
    assert float(picked[text].float().mean()) == pytest.approx(0.15, abs=0.01)
    inputs = torch.cat([b["input_ids"].flatten() for b, _, _ in found])
    labels = torch.cat([b["labels"].flatten() for b, _, _ in found])
    original = torch.cat([o.flatten() for _, o, _ in found])
    assert torch.equal(labels[picked], original[picked]) and torch.equal(inputs[~picked], original[~picked])
    assert float((inputs[picked] == tokenizer.mask_token_id).float().mean()) == pytest.approx(0.8, abs=0.03)
    assert float((inputs[picked] == original[picked]).float().mean()) == pytest.approx(0.1, abs=0.03)


def test_whole_word_masking_masks_whole_words_at_the_same_rate(tokenizer, chunks):
    found = masked_batches(tokenizer, chunks, whole_word_masking=True)
    picked_text, picked_in_words = [], 0
    for batch, _, words in found:
        picked = batch["labels"] != IGNORE_INDEX
        same_word = (words[:, 1:] == words[:, :-1]) & (words[:, 1:] >= 0)
        assert torch.equal(picked[:, 1:][same_word], picked[:, :-1][same_word])  # a word is all in or all out
        assert bool((batch["input_ids"][picked] == tokenizer.mask_token_id).all())
        picked_in_words += int((picked[:, 1:] & same_word).sum())
        picked_text.append(picked[words >= 0])
    assert picked_in_words > 100  # many words of several tokens were masked: the check above had work to do
    assert float(torch.cat(picked_text).float().mean()) == pytest.approx(0.15, abs=0.015)


def test_fixed_mask_evaluation_is_repeatable(tokenizer, chunks):
    items = chunks.items(range(40))
    first = fixed_mask_batches(items, MaskingCollator(tokenizer, seed=5), batch_size=8)
    again = fixed_mask_batches(items, MaskingCollator(tokenizer, seed=5), batch_size=8)
    other = fixed_mask_batches(items, MaskingCollator(tokenizer, seed=6), batch_size=8)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(first, again, strict=True) for k in a)
    assert not all(torch.equal(a["labels"], b["labels"]) for a, b in zip(first, other, strict=True))
    _, model, _ = load_masked_lm(BACKBONE)
    model.train()
    loss = masked_lm_loss(model, first)
    assert loss == masked_lm_loss(model, first) and model.training  # dropout off, mode restored
    assert loss == pytest.approx(np.log(len(tokenizer)), abs=0.5)  # a random head guesses uniformly


def test_adaptation_lowers_the_held_out_loss(adapted):
    _, metrics = adapted
    assert metrics["held_out_loss_after"] < metrics["held_out_loss_before"] - 0.3
    assert metrics["n_essays"] + metrics["n_duplicates_dropped"] == 60
    assert metrics["n_held_out_essays"] == round(0.2 * metrics["n_essays"])
    assert metrics["n_chunks"] == metrics["n_train_chunks"] + metrics["n_held_out_chunks"]
    assert metrics["steps"] == 3 * -(-metrics["n_train_chunks"] // 16)
    assert metrics["held_out_masked_tokens"] > 300 and metrics["seconds"] > 0
    assert any("cls.predictions" in name for name in metrics["randomly_initialised"])


def test_the_saved_folder_loads_as_a_backbone_with_its_newline_token(adapted):
    out, metrics = adapted
    assert json.loads((out / METRICS_FILE).read_text()) == json.loads(json.dumps(metrics))
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    tokenizer = load_tokenizer(str(out))  # the newline token is saved: no need to ask again
    assert NEWLINE_TOKEN in tokenizer.get_vocab() and len(tokenizer) == metrics["vocab_size"] == 2001
    assert load_tokenizer(str(out), add_newline_tokens=True).get_vocab() == tokenizer.get_vocab()
    model, info = AutoModel.from_pretrained(out, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    ids = tokenizer("A car.\n\nA road.", return_tensors="pt")
    assert model(**ids).last_hidden_state.shape == (1, ids["input_ids"].shape[1], model.config.hidden_size)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_same_seed_gives_the_same_weights(essays, tmp_path):
    settings = {**FAST, "epochs": 1, "lr": 1e-3, "whole_word_masking": True, "add_newline_tokens": False}
    runs = {name: adapt_backbone(BACKBONE, essays[:20], tmp_path / name, seed=seed, **settings)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))}
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in runs}
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert runs["a"]["held_out_loss_after"] == runs["b"]["held_out_loss_after"]
    embeddings = next(k for k in weights["a"] if "word_embeddings" in k)
    assert not torch.equal(weights["a"][embeddings], weights["c"][embeddings])
    assert NEWLINE_TOKEN not in load_tokenizer(str(tmp_path / "a")).get_vocab()  # not asked for: not added
    assert weights["a"][embeddings].shape[0] == 2000


def test_a_killed_run_resumes_from_its_last_epoch_to_the_same_weights(essays, tmp_path, monkeypatch):
    settings = {**FAST, "epochs": 3, "lr": 1e-3, "batch_size": 8, "seed": 3}
    whole = adapt_backbone(BACKBONE, essays[:24], tmp_path / "whole", **settings)
    checkpoint = tmp_path / "ckpt" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    real_step, calls = mlm_loop._mlm_step, {"n": 0}

    def dies_in_the_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > whole["steps"] // 3 + 1:
            raise KeyboardInterrupt("killed")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(mlm_loop, "_mlm_step", dies_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        adapt_backbone(BACKBONE, essays[:24], tmp_path / "resumed", checkpoint=checkpoint, fingerprint="f", **settings)
    assert checkpoint.is_file() and not (tmp_path / "resumed").exists()
    taken = []
    monkeypatch.setattr(mlm_loop, "_mlm_step",
                        lambda *args, **kwargs: taken.append(1) or real_step(*args, **kwargs))
    resumed = adapt_backbone(BACKBONE, essays[:24], tmp_path / "resumed", checkpoint=checkpoint, fingerprint="f",
                             **settings)
    assert 0 < len(taken) <= whole["steps"] - whole["steps"] // 3  # the first epoch was not trained again
    assert not checkpoint.exists()  # removed once the folder is written
    a, b = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["held_out_loss_after"] == whole["held_out_loss_after"] and resumed["steps"] == whole["steps"]


def test_a_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local model folder"):
        adapt_backbone(str(tmp_path / "no-such-backbone"), ["An essay."], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()
    no_weights = tmp_path / "tokenizer-only"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(BACKBONE) / name, no_weights / name)
    with pytest.raises(FileNotFoundError, match="no masked-LM model could be loaded locally"):
        load_masked_lm(str(no_weights))


@pytest.mark.parametrize("where", ["training", "saving"])
def test_a_crash_leaves_no_folder_and_an_old_one_untouched(where, essays, tmp_path, monkeypatch):
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        if where == "saving" or len(calls) == 3:
            raise RuntimeError(f"killed while {where}")

    if where == "training":
        monkeypatch.setattr(torch.optim.AdamW, "step", crash)
    else:  # the metrics are the last file written into the staged folder
        monkeypatch.setattr("common.train.mlm.write_json", crash)
    with pytest.raises(RuntimeError, match=f"killed while {where}"):
        adapt_backbone(BACKBONE, essays[:20], tmp_path / "fresh", epochs=1, **FAST)
    assert list(tmp_path.iterdir()) == []

    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "config.json").write_text("{}")
    calls.clear()
    with pytest.raises(RuntimeError, match=f"killed while {where}"):
        adapt_backbone(BACKBONE, essays[:20], previous, epochs=1, **FAST)
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]
    assert [p.name for p in previous.iterdir()] == ["config.json"]


@pytest.mark.parametrize("bad", [{"mlm_probability": 0.0}, {"mlm_probability": 1.0}, {"held_out_share": 1.0},
                                 {"epochs": 0}, {"warmup_ratio": 1.0}, {"mixed_precision": "fp8"},
                                 {"device": "tpu"}, {"max_length": 2}])
def test_bad_settings_are_rejected(bad, essays, tmp_path):
    with pytest.raises(ValueError):
        adapt_backbone(BACKBONE, essays[:4], tmp_path / "out", **{**FAST, **bad})
    assert not (tmp_path / "out").exists()
