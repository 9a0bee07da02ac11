"""Tests of common/models/scorer.py on the tiny DeBERTa-v2 backbone: building options, layer discovery,
padding blindness end to end, save / load (checked in a fresh process), strict head loading, fp16 inference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel

from common.models import POOLINGS, EssayScorer, ScorerConfig
from common.models.scorer import read_config

REPO = Path(__file__).resolve().parents[1]
TINY_BACKBONE = REPO / "input" / "tiny-deberta-v2"
VOCAB = 2000
PAD_ID = 0


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the tiny backbone, so nothing a test does can touch input/."""
    target = tmp_path_factory.mktemp("backbones") / "tiny-deberta-v2"
    shutil.copytree(TINY_BACKBONE, target)
    return target


def make_batch(seed: int = 0, vocab: int = VOCAB) -> tuple[torch.Tensor, torch.Tensor]:
    """Three essays of 24 tokens, the second padded (right) after 18."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 24), generator=g)
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[1, 18:] = 0
    ids[1, 18:] = PAD_ID
    return ids, mask


def quiet_backbone(path: Path) -> torch.nn.Module:
    """The tiny backbone without dropout, for exact comparisons in training mode."""
    return AutoModel.from_pretrained(path, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@torch.no_grad()
def look_trained(model: EssayScorer, seed: int = 0) -> None:
    """Move every trainable weight far from its initial value, so a re-initialised part cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(0.3 * torch.randn(param.shape, generator=g))


# ---------------------------------------------------------------- building


@pytest.mark.parametrize(("head", "n_logits"), [("regression", 1), ("classification", 6), ("ordinal", 5)])
def test_forward_and_predict_shapes(backbone_dir: Path, head: str, n_logits: int) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), head=head))
    ids, mask = make_batch()
    assert model(ids, mask).shape == (3, n_logits)
    scores, probs = model.predict(ids, mask)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert probs is None if head == "regression" else probs.shape == (3, 6)


@pytest.mark.parametrize(("head", "loss", "formula"), [
    ("regression", "", lambda logits, y: F.mse_loss(logits[:, 0], y)),
    ("classification", "", lambda logits, y: F.cross_entropy(logits, y.long() - 1)),
    ("ordinal", "mse", lambda logits, y: F.mse_loss(1 + torch.sigmoid(logits).sum(-1), y)),
])
def test_the_model_trains_with_the_configured_loss(backbone_dir: Path, head: str, loss: str, formula) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), head=head, loss=loss))
    logits, y = model(*make_batch()), torch.tensor([1.0, 4.0, 6.0])
    torch.testing.assert_close(model.loss(logits, y), formula(logits, y))


def test_weights_are_fp32_even_from_a_half_precision_backbone(backbone_dir: Path) -> None:
    half = AutoModel.from_pretrained(backbone_dir, dtype=torch.bfloat16)
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir)), backbone=half)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.dtype for p in EssayScorer(ScorerConfig(backbone=str(backbone_dir))).parameters()} == {torch.float32}


def test_a_new_model_trains_and_predict_is_deterministic(backbone_dir: Path) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), n_dropout_samples=2))
    assert model.training and model.backbone.training
    ids, mask = make_batch()
    first, _ = model.predict(ids, mask)
    assert model.training  # predict runs in eval mode and restores the mode
    torch.testing.assert_close(model.predict(ids, mask)[0], first)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", POOLINGS)
def test_extra_padding_does_not_change_a_prediction(backbone_dir: Path, pooling: str, side: str) -> None:
    torch.manual_seed(0)
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), pooling=pooling)).eval()
    essay = torch.randint(5, VOCAB, (1, 10))
    alone, _ = model.predict(essay, torch.ones(1, 10, dtype=torch.long))
    padding = torch.full((1, 14), PAD_ID)
    ids = torch.cat([essay, padding], 1) if side == "right" else torch.cat([padding, essay], 1)
    mask = (torch.arange(24) < 10) if side == "right" else (torch.arange(24) >= 14)
    other = torch.randint(5, VOCAB, (1, 24))
    scores, _ = model.predict(torch.cat([ids, other]), torch.stack([mask.long(), torch.ones(24, dtype=torch.long)]))
    torch.testing.assert_close(scores[:1], alone, atol=1e-5, rtol=0)


def test_reinit_gives_the_top_layers_the_models_own_init(backbone_dir: Path) -> None:
    backbone = AutoModel.from_pretrained(backbone_dir)
    with torch.no_grad():  # a "pretrained" model far from the init distribution
        for param in backbone.parameters():
            param.mul_(5.0).add_(0.3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    std = backbone.config.initializer_range
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), reinit_layers=1), backbone=backbone)
    top, bottom = model.encoder_layers()[-1], model.encoder_layers()[0]
    for name, module in top.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert not torch.allclose(module.weight, before[f"encoder.layer.1.{name}.weight"]), name
            assert abs(module.weight.std().item() - std) < 0.15 * std, name
            assert abs(module.weight.mean().item()) < 0.1 * std, name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
    for name, param in bottom.named_parameters():
        assert torch.equal(param, before[f"encoder.layer.0.{name}"]), name
    for name, param in model.embeddings_module().named_parameters():
        assert torch.equal(param, before[f"embeddings.{name}"]), name


def test_reinit_more_layers_than_the_backbone_has_is_an_error(backbone_dir: Path) -> None:
    with pytest.raises(ValueError, match="reinit_layers=3 but the backbone has 2 layers"):
        EssayScorer(ScorerConfig(backbone=str(backbone_dir), reinit_layers=3))


def test_frozen_embeddings_get_no_gradient(backbone_dir: Path) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), freeze_embeddings=True))
    embeddings = model.embeddings_module()
    assert embeddings is model.backbone.embeddings
    assert not any(p.requires_grad for p in embeddings.parameters())
    model(*make_batch()).sum().backward()
    assert all(p.grad is None for p in embeddings.parameters())
    assert all(p.grad is not None for layer in model.encoder_layers() for p in layer.parameters())


def test_gradient_checkpointing_gives_the_same_gradients(backbone_dir: Path) -> None:
    config = ScorerConfig(backbone=str(backbone_dir), dropout=0.0)
    plain = EssayScorer(config, backbone=quiet_backbone(backbone_dir))
    checkpointed = EssayScorer(dataclasses.replace(config, gradient_checkpointing=True),
                               backbone=quiet_backbone(backbone_dir))
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.backbone.encoder.gradient_checkpointing and checkpointed.training
    for model in (plain, checkpointed):
        model(*make_batch()).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_vocab_size_resizes_the_embeddings(backbone_dir: Path) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), vocab_size=VOCAB + 3))
    assert model.backbone.get_input_embeddings().num_embeddings == VOCAB + 3
    ids, mask = make_batch(vocab=VOCAB + 3)
    ids[0, :3] = torch.tensor([VOCAB, VOCAB + 1, VOCAB + 2])  # the added tokens
    assert torch.isfinite(model(ids, mask)).all()


def test_lora_trains_adapters_pooling_and_head_only(backbone_dir: Path) -> None:
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), pooling="attention", lora_r=4,
                                     gradient_checkpointing=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all("lora_" in name or name.startswith(("pooling.", "head.")) for name in trainable)
    assert any(name.startswith("pooling.") for name in trainable) and any("lora_A" in name for name in trainable)
    layers = model.encoder_layers()
    assert len(layers) == 2 and all(hasattr(layer.attention.self.query_proj, "lora_A") for layer in layers)
    assert model.embeddings_module() is model.backbone.get_base_model().embeddings
    model(*make_batch()).sum().backward()
    assert all(model.get_parameter(name).grad is not None for name in trainable if "lora_A" in name)


def test_under_lora_the_rows_of_added_tokens_train_and_are_saved(backbone_dir: Path, tmp_path: Path) -> None:
    """The newline token added by resizing starts as a random row: under LoRA it must train, and load back."""
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), vocab_size=VOCAB + 1, lora_r=4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("trainable_tokens_delta" in name for name in trainable)  # the added row, not the whole matrix
    ids, mask = make_batch(vocab=VOCAB + 1)
    ids[:, 1] = VOCAB  # the added token in every essay
    without = ids.clone()
    without[:, 1] = 5
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.eval()
    start = model(ids, mask).detach() - model(without, mask).detach()  # what the added token contributes
    for _ in range(3):
        optimizer.zero_grad()
        model(ids, mask).pow(2).sum().backward()
        optimizer.step()
    trained = model(ids, mask).detach()
    model.save(tmp_path)
    loaded = EssayScorer.load(tmp_path)
    torch.testing.assert_close(loaded(ids, mask), trained)
    delta = next(p for name, p in model.named_parameters() if "trainable_tokens_delta" in name)
    assert delta.abs().sum() > 0 and not torch.allclose(trained - model(without, mask).detach(), start)


def test_bert_like_layout_directly_and_through_peft() -> None:
    def tiny_bert() -> BertModel:
        torch.manual_seed(0)
        return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                    intermediate_size=32))

    bert = tiny_bert()
    model = EssayScorer(ScorerConfig(backbone="tiny-bert", pooling="weighted_layer"), backbone=bert)
    assert model.encoder_layers() == list(bert.encoder.layer)
    assert model.embeddings_module() is bert.embeddings
    ids, mask = torch.randint(1, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    assert model(ids, mask).shape == (2, 1)
    lora_bert = tiny_bert()
    lora = EssayScorer(ScorerConfig(backbone="tiny-bert", lora_r=2, lora_target_modules=["query", "value"]),
                       backbone=lora_bert)
    assert lora.encoder_layers() == list(lora_bert.encoder.layer)
    assert lora.embeddings_module() is lora_bert.embeddings
    assert lora(ids, mask).shape == (2, 1)


def test_bad_configs_are_rejected(backbone_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head: unknown head 'poisson'; choose one of regression, classification"):
        ScorerConfig(backbone=str(backbone_dir), head="poisson")
    with pytest.raises(ValueError, match="pooling: unknown pooling 'median'; choose one of cls, mean"):
        ScorerConfig(backbone=str(backbone_dir), pooling="median")
    with pytest.raises(ValueError, match="loss: loss 'cumulative_bce' works with the ordinal head only"):
        ScorerConfig(backbone=str(backbone_dir), loss="cumulative_bce")
    with pytest.raises(ValueError, match=r"dropout: 1\.5 is out of range"):
        ScorerConfig(backbone=str(backbone_dir), dropout=1.5)
    with pytest.raises(ValueError, match="LoRA freezes the backbone"):
        ScorerConfig(backbone=str(backbone_dir), lora_r=8, reinit_layers=1)
    with pytest.raises(ValueError, match="vocab_size: 0"):
        ScorerConfig(backbone=str(backbone_dir), vocab_size=0)
    with pytest.raises(TypeError):
        ScorerConfig(str(backbone_dir))  # keyword-only: a positional backbone cannot land in another field
    path = tmp_path / "scorer.json"
    path.write_text(json.dumps({"backbone": "x", "poolng": "mean"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['poolng'\]"):
        read_config(path)


# ---------------------------------------------------------------- save / load

FRESH_PROCESS = """
import json, sys, torch
from common.models import EssayScorer
inputs = json.loads(open(sys.argv[1]).read())
ids, mask = torch.tensor(inputs["input_ids"]), torch.tensor(inputs["attention_mask"])
out = {}
for directory in sys.argv[3:]:
    scores, probs = EssayScorer.load(directory).predict(ids, mask)
    out[directory] = {"scores": scores.tolist(), "probs": None if probs is None else probs.tolist()}
open(sys.argv[2], "w").write(json.dumps(out))
"""


def test_saved_scorers_predict_the_same_in_a_fresh_process(backbone_dir: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(backbone_dir.parent)  # the LoRA scorer names its base by a relative path
    ids, mask = make_batch(vocab=VOCAB + 3)
    ids[0, :3] = torch.tensor([VOCAB, VOCAB + 1, VOCAB + 2])  # added tokens: their rows must be saved too
    configs = {
        "full": ScorerConfig(backbone=str(backbone_dir), head="classification", pooling="attention",
                             reinit_layers=1, n_dropout_samples=3, vocab_size=VOCAB + 3),
        "lora": ScorerConfig(backbone=backbone_dir.name, head="ordinal", pooling="weighted_layer", lora_r=4,
                             vocab_size=VOCAB + 3),
    }
    expected = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        model = EssayScorer(config)
        look_trained(model)
        model.save(tmp_path / name)
        scores, probs = model.predict(ids, mask)
        expected[str(tmp_path / name)] = (scores, probs)
    assert sorted(os.listdir(tmp_path / "full")) == ["backbone", "model.safetensors", "scorer.json"]
    assert sorted(os.listdir(tmp_path / "lora")) == ["adapter", "head.safetensors", "scorer.json"]
    assert read_config(tmp_path / "lora" / "scorer.json") == configs["lora"]

    inputs, result = tmp_path / "inputs.json", tmp_path / "result.json"
    inputs.write_text(json.dumps({"input_ids": ids.tolist(), "attention_mask": mask.tolist()}))
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(inputs), str(result), *expected],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         cwd=backbone_dir.parent, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(result.read_text())
    for directory, (scores, probs) in expected.items():
        torch.testing.assert_close(torch.tensor(got[directory]["scores"]), scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.tensor(got[directory]["probs"]), probs, atol=1e-6, rtol=0)


def test_lora_head_is_restored_not_reinitialised(backbone_dir: Path, tmp_path: Path) -> None:
    config = ScorerConfig(backbone=str(backbone_dir), head="classification", pooling="attention", lora_r=4)
    torch.manual_seed(0)
    model = EssayScorer(config)
    look_trained(model)
    model.save(tmp_path)
    torch.manual_seed(0)  # a fresh build with the same seed: what a silently re-initialised head would be
    fresh = EssayScorer(config)
    loaded = EssayScorer.load(tmp_path)
    assert not loaded.training
    for part in ("pooling", "head"):
        saved_state = getattr(model, part).state_dict()
        for key, value in getattr(loaded, part).state_dict().items():
            assert torch.equal(value, saved_state[key]), f"{part}.{key}"
            assert not torch.equal(value, getattr(fresh, part).state_dict()[key]), f"{part}.{key}"
    lora_weights = {k: v for k, v in model.backbone.state_dict().items() if "lora_" in k}
    loaded_lora = {k: v for k, v in loaded.backbone.state_dict().items() if "lora_" in k}
    assert lora_weights.keys() == loaded_lora.keys()
    assert all(torch.equal(lora_weights[k], loaded_lora[k]) for k in lora_weights)


def test_load_rejects_missing_or_unexpected_weights(backbone_dir: Path, tmp_path: Path) -> None:
    lora_dir, full_dir = tmp_path / "lora", tmp_path / "full"
    EssayScorer(ScorerConfig(backbone=str(backbone_dir), lora_r=4)).save(lora_dir)
    EssayScorer(ScorerConfig(backbone=str(backbone_dir))).save(full_dir)
    head_file, weights_file = lora_dir / "head.safetensors", full_dir / "model.safetensors"
    head_state, weights = load_file(head_file), load_file(weights_file)

    save_file({k: v for k, v in head_state.items() if k != "head.fc.weight"}, head_file)
    with pytest.raises(ValueError, match=r"missing: \['fc.weight'\]"):
        EssayScorer.load(lora_dir)
    save_file({**head_state, "head.extra": torch.zeros(1)}, head_file)
    with pytest.raises(ValueError, match=r"unexpected: \['extra'\]"):
        EssayScorer.load(lora_dir)
    save_file({k: v for k, v in weights.items() if k != "head.fc.bias"}, weights_file)
    with pytest.raises(ValueError, match=r"missing: \['head.fc.bias'\]"):
        EssayScorer.load(full_dir)


def test_half_precision_inference_agrees_with_fp32(backbone_dir: Path, tmp_path: Path) -> None:
    """The path inference takes on Kaggle's T4/P100: fp32 weights under fp16 autocast (predict_fold_model with
    precision fp16); CPU autocast runs the same kernels' fp16 variants here."""
    from common.infer.inference import predict_fold_model
    from common.models.tokenization import EssayCollator, load_tokenizer

    torch.manual_seed(0)
    model = EssayScorer(ScorerConfig(backbone=str(backbone_dir), head="ordinal", pooling="mean_max"))
    look_trained(model)
    model.save(tmp_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ids, mask = make_batch()
    rows = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    collator = EssayCollator(load_tokenizer(str(backbone_dir)))
    fp32_scores, fp32_probs = predict_fold_model(tmp_path, rows, collator, [device], "fp32", 4096)
    scores, probs = predict_fold_model(tmp_path, rows, collator, [device], "fp16", 4096)
    assert scores.dtype == np.float64 and probs.shape == (3, 6)
    assert not np.array_equal(scores, fp32_scores)  # autocast did run in half precision
    np.testing.assert_allclose(scores, fp32_scores, atol=0.05, rtol=0)
    np.testing.assert_allclose(probs, fp32_probs, atol=0.02, rtol=0)
    reference, _ = EssayScorer.load(tmp_path).predict(ids, mask)
    np.testing.assert_allclose(fp32_scores, reference.numpy(), atol=1e-5, rtol=0)
