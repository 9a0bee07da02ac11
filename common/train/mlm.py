"""Continued masked-language-model pretraining (domain adaptation) of a backbone on essays: `adapt_backbone`.

Why: a backbone pretrained on books and web text has seen few student essays -- their misspellings,
run-on sentences and paragraph breaks (the newline tokens that `load_tokenizer` adds start with random
embeddings). A short pass of masked-language modelling on the competition's essays moves the encoder
towards that text before it is fine-tuned to score it. `adapt_backbone` does that pass and writes a
folder that replaces the hub name as a model's `backbone`.

How, in the order `adapt_backbone` does it:
- Tokenizer and model come from local files only (`load_masked_lm`). deberta-v3 checkpoints hold no MLM head
  (they were pretrained as ELECTRA-style discriminators), so the head usually starts random; that is logged.
- The corpus (`common.train.mlm_corpus`): the unique essays cut into `max_length` chunks, a seeded share of
  essays held out, masks from transformers' `DataCollatorForLanguageModeling` through `MaskingCollator`; the
  held-out masked-token loss is measured before and after training on the same, fixed masks, so the two
  numbers differ only by the weights.
- The loop (`common.train.mlm_loop`): AdamW, linear warmup and decay, fp32 weights, autocast (bf16, or fp16
  with a GradScaler) on CUDA only, gradient clipping, length-grouped batches with dynamic padding.
- The encoder (without the MLM head, which fine-tuning never uses, so `AutoModel` loads the folder
  without unexpected-key reports) is saved with the tokenizer and `mlm_metrics.json` through
  `staged_dir`: a crash leaves no half-written folder, and an existing one is replaced only on success.
  02_train keeps that folder under output/mlm/<fingerprint>/ (`common.train.train_stage.adapted_backbone`).

Same inputs and seed give the same weights on CPU.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForMaskedLM, PreTrainedTokenizerBase, set_seed

from common.core.io import staged_dir, write_json
from common.models.tokenization import load_tokenizer
from common.train.engine import Engine, remove_checkpoint
from common.train.mlm_corpus import MaskingCollator, MlmCorpus
from common.train.mlm_loop import masked_lm_loss, train_masked_lm

log = logging.getLogger(__name__)

METRICS_FILE = "mlm_metrics.json"


def load_masked_lm(backbone: str, add_newline_tokens: bool = True
                   ) -> tuple[PreTrainedTokenizerBase, nn.Module, list[str]]:
    """The backbone's tokenizer and fp32 masked-LM model, embeddings sized to the tokenizer.

    Returns (tokenizer, model, names of the weights initialised randomly because the checkpoint lacks
    them -- usually the MLM head). Local files only: a local folder or a hub name in the HF cache.

    Raises:
        FileNotFoundError: the tokenizer or the weights are not found locally.
    """
    tokenizer = load_tokenizer(backbone, add_newline_tokens=add_newline_tokens)
    try:
        model, info = AutoModelForMaskedLM.from_pretrained(backbone, dtype=torch.float32, local_files_only=True,
                                                           output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"backbone {backbone!r}: no masked-LM model could be loaded locally ({exc}). Fix: set the backbone "
            "to a local model folder (config.json, weights, tokenizer files), or to a hub name that is in the "
            f"Hugging Face cache (download it once where there is internet: `hf download {backbone}`)."
        ) from exc
    missing = sorted(info["missing_keys"])
    encoder = [name for name in missing if name.startswith(model.base_model_prefix + ".")]
    if encoder:
        log.warning("%s lacks %d encoder weights, initialised randomly (%s): is it a checkpoint of this "
                    "architecture?", backbone, len(encoder), ", ".join(encoder[:5]))
    if len(missing) > len(encoder):
        log.info("%s has no MLM head weights (%s): the head starts random, as for deberta-v3 checkpoints",
                 backbone, ", ".join(name for name in missing if name not in encoder))
    n_rows = model.get_input_embeddings().num_embeddings
    if n_rows != len(tokenizer):
        log.info("resizing token embeddings %d -> %d (the tokenizer's size, as training does)", n_rows,
                 len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    return tokenizer, model, missing


def adapt_backbone(backbone: str, texts: Sequence[str], out_dir: Path, *, mlm_probability: float = 0.15,
                   whole_word_masking: bool = False, max_length: int = 512, epochs: float = 1.0, batch_size: int = 8,
                   lr: float = 5e-5, weight_decay: float = 0.01, warmup_ratio: float = 0.06, max_grad_norm: float = 1.0,
                   held_out_share: float = 0.05, add_newline_tokens: bool = True, seed: int = 42, device: str = "auto",
                   mixed_precision: str = "auto", checkpoint: Path | None = None, fingerprint: str = "") -> dict:
    """Continue masked-language-model pretraining of `backbone` on essays; save it to `out_dir`.

    Args:
        backbone: a local model folder, or a hub name in the Hugging Face cache (never downloaded).
        texts: essay texts (exact duplicates are used once).
        out_dir: folder to write: the adapted encoder (`AutoModel.from_pretrained(out_dir)`), its tokenizer
            (`load_tokenizer(out_dir)`, newline token included when added) and `mlm_metrics.json`.
            Written whole or not at all; an existing folder is replaced only when everything succeeded.
        mlm_probability: share of tokens (or, with whole_word_masking, of words) masked.
        whole_word_masking: mask all the tokens of a word together.
        max_length: chunk length in tokens, special tokens included (essays are cut, not truncated).
        epochs: passes over the training chunks; a fraction stops part-way through one.
        batch_size: chunks per optimizer step.
        lr, weight_decay, warmup_ratio, max_grad_norm: AdamW with a linear warmup over warmup_ratio of
            the steps, then linear decay to 0; biases and norm weights are not decayed; gradients are
            clipped to max_grad_norm.
        held_out_share: share of essays held out to measure the loss before and after (0: no measure).
        add_newline_tokens: as in `load_tokenizer`; the embeddings are resized to the tokenizer.
        seed: seeds weights of a missing head, the held-out split, batch order, masks and dropout.
        device: "auto" (CUDA when present), "cpu" or "cuda".
        mixed_precision: "auto" (bf16 where supported, else fp16, on CUDA), "bf16", "fp16" or "no";
            ignored on CPU. Weights and optimizer stay fp32.
        checkpoint: where a resumable checkpoint is kept at each epoch end while training (removed once the
            folder is written); a killed run started again with the same `fingerprint` resumes from it and
            ends with the weights of an uninterrupted run.
        fingerprint: what the run depends on (settings and essays); a checkpoint of another one is ignored.

    Returns the metrics also written to out_dir/mlm_metrics.json: held_out_loss_before and _after (nats per
    masked token on the same fixed masks; None without a held-out share), n_essays (unique), n_chunks, steps,
    seconds (loading and saving included), and the counts, settings and timings around them.
    Raises FileNotFoundError (the backbone is not found locally) or ValueError (a setting out of range, no essay).
    """
    settings = {"mlm_probability": mlm_probability, "whole_word_masking": whole_word_masking,
                "max_length": max_length, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "warmup_ratio": warmup_ratio, "max_grad_norm": max_grad_norm,
                "held_out_share": held_out_share, "add_newline_tokens": add_newline_tokens, "seed": seed}
    _check_settings(mlm_probability, epochs, batch_size, lr, weight_decay, warmup_ratio, max_grad_norm)
    started = time.perf_counter()
    engine = Engine(device, mixed_precision)
    set_seed(seed)
    tokenizer, model, initialised = load_masked_lm(backbone, add_newline_tokens)
    corpus = MlmCorpus.build(tokenizer, texts, settings)
    model.to(engine.device)
    evaluate = corpus.eval_batches
    before = masked_lm_loss(model, evaluate, engine.device, engine.precision) if evaluate else None
    trained = train_masked_lm(model, corpus.train_items,
                              MaskingCollator(tokenizer, mlm_probability, whole_word_masking, seed=seed), engine,
                              epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                              warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed,
                              checkpoint=checkpoint, fingerprint=fingerprint)
    after = masked_lm_loss(model, evaluate, engine.device, engine.precision) if evaluate else None
    if evaluate:
        log.info("held-out MLM loss %.4f before adaptation, %.4f after", before, after)
    metrics = {"backbone": str(backbone), "held_out_loss_before": before, "held_out_loss_after": after,
               **corpus.counts(len(texts)), **trained, "seconds": None, "vocab_size": len(tokenizer),
               "randomly_initialised": initialised, "device": str(engine.device),
               "mixed_precision": engine.precision, "settings": settings}
    if engine.is_main:
        _save(out_dir, model, tokenizer, metrics, started)
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
    engine.wait()
    return metrics


def _check_settings(mlm_probability: float, epochs: float, batch_size: int, lr: float, weight_decay: float,
                    warmup_ratio: float, max_grad_norm: float) -> None:
    if epochs <= 0 or batch_size < 1 or lr <= 0 or weight_decay < 0 or max_grad_norm <= 0:
        raise ValueError(f"need epochs > 0, batch_size >= 1, lr > 0, weight_decay >= 0 and max_grad_norm > 0; "
                         f"got {epochs}, {batch_size}, {lr}, {weight_decay}, {max_grad_norm}")
    if not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    if not 0 < mlm_probability < 1:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")


def _save(out_dir: Path, model: nn.Module, tokenizer: PreTrainedTokenizerBase, metrics: dict, started: float) -> None:
    """The encoder (without the MLM head), its tokenizer and the metrics, as one folder or nothing."""
    with staged_dir(out_dir) as tmp:
        model.base_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _portable_tokenizer_config(tmp / "tokenizer_config.json")
        _check_saved_tokenizer(tmp, tokenizer)
        metrics["seconds"] = time.perf_counter() - started
        write_json(tmp / METRICS_FILE, metrics)
    log.info("adapted backbone written to %s in %.0f s", out_dir, metrics["seconds"])


def _portable_tokenizer_config(path: Path) -> None:
    """Name the generic fast-tokenizer class where transformers 5 wrote its own generic one.

    transformers 5 saves a tokenizer that has no model-specific class (the tiny demo backbone's) as
    "TokenizersBackend", which transformers 4.x (Kaggle images) cannot load; "PreTrainedTokenizerFast"
    loads in both. Model-specific classes (DebertaV2Tokenizer) are left as they are.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.pop("backend", None)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_saved_tokenizer(folder: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """The saved tokenizer must reload with the same size and ids without being asked to add anything:
    the newline token is part of the folder, so training finds it whatever its add_newline_tokens."""
    reloaded = load_tokenizer(str(folder))
    sample = "A first line.\n\nA second paragraph."
    if len(reloaded) != len(tokenizer) or reloaded(sample)["input_ids"] != tokenizer(sample)["input_ids"]:
        raise RuntimeError(f"the tokenizer saved to {folder} reloads differently ({len(reloaded)} tokens, "
                           f"{len(tokenizer)} expected): report this with the backbone's name")
