"""Continued masked-language-model pretraining (domain adaptation) of a backbone on essays.

Why: a backbone pretrained on books and web text has seen few student essays -- their misspellings,
run-on sentences and paragraph breaks (the newline tokens that `load_tokenizer` adds start with random
embeddings). A short pass of masked-language modelling on the competition's essays moves the encoder
towards that text before it is fine-tuned to score it. `adapt_backbone` does that pass and writes a
folder that replaces the hub name as a model's `backbone`.

How, in the order `adapt_backbone` does it:
- Tokenizer and model come from local files only. deberta-v3 checkpoints hold no MLM head (they were
  pretrained as ELECTRA-style discriminators), so the head usually starts random; that is logged.
- Essays are tokenised as training tokenises them (`newline_safe`, the same tokenizer and newline
  token) but cut into `max_length` chunks instead of truncated, so no text is wasted; the first chunk of
  an essay is exactly what `tokenize_essays` gives. Exact duplicate essays (train.csv is largely a copy
  of part of the persuade corpus) are kept once, so that no held-out essay is also trained on.
- A seeded share of essays (never single chunks) is held out; its masked-token loss is measured before
  and after training on the same, fixed masks, so the two numbers differ only by the weights.
- Masks come from transformers' `DataCollatorForLanguageModeling`, fed by `MaskingCollator`.
- A plain loop trains: AdamW, linear warmup and decay, fp32 weights, autocast (bf16, or fp16 with a
  GradScaler) on CUDA only, gradient clipping, length-grouped batches with dynamic padding.
- The encoder (without the MLM head, which fine-tuning never uses, so `AutoModel` loads the folder
  without unexpected-key reports) is saved with the tokenizer and `mlm_metrics.json` through
  `staged_dir`: a crash leaves no half-written folder, and an existing one is replaced only on success.

Same inputs and seed give the same weights on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
    set_seed,
)

from common.core.devices import autocast_dtype
from common.core.io import staged_dir, write_json
from common.models.tokenization import TOKENIZE_CHUNK, batch_width, load_tokenizer, newline_safe, pad_multiple
from common.train.engine import (
    Engine,
    derived_seed,
    epoch_batches,
    read_checkpoint,
    remove_checkpoint,
    set_rng_state,
)
from common.train.optim import build_scheduler

log = logging.getLogger(__name__)

METRICS_FILE = "mlm_metrics.json"
IGNORE_INDEX = -100
"""Label of the positions the loss skips (transformers' convention)."""


@dataclass
class EssayChunks:
    """Essays cut into model-sized token chunks; chunk i comes from essay `essay_index[i]`.

    `words[i][k]` numbers the words of chunk i (0, 1, ... in order) for whole-word masking; it is -1 at
    the special tokens the tokenizer added ([CLS], [SEP]), which are never masked.
    """

    input_ids: list[list[int]]
    words: list[list[int]]
    essay_index: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def items(self, rows: np.ndarray | Sequence[int]) -> list[dict]:
        """The chunks at `rows` as {"input_ids", "words"} dicts, what `MaskingCollator` takes."""
        return [{"input_ids": self.input_ids[i], "words": self.words[i]} for i in rows]


def essay_chunks(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int) -> EssayChunks:
    """Every token of every essay, in chunks of at most `max_length` tokens, special tokens included.

    Each chunk is framed by the tokenizer's special tokens as a whole essay is; the first chunk of an
    essay equals `tokenize_essays(tokenizer, [text], max_length)[0]`. Needs a fast tokenizer (word ids).
    """
    if not tokenizer.is_fast:
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer: MLM chunking needs word ids; "
                         "load the backbone's tokenizer.json with common.models.tokenization.load_tokenizer")
    n_special = len(tokenizer("", add_special_tokens=True)["input_ids"])
    if max_length <= n_special:
        raise ValueError(f"max_length={max_length} leaves no room for text besides {n_special} special tokens")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"essay text at row {row} is {type(text).__name__} ({text!r}), not a string")
    input_ids: list[list[int]] = []
    words: list[list[int]] = []
    essay_index: list[int] = []
    previous_side = tokenizer.truncation_side
    tokenizer.truncation_side = "right"  # chunks in reading order, the first one what training sees
    try:
        with tqdm(total=len(texts), desc="chunking", unit="essay", leave=False,
                  disable=len(texts) <= TOKENIZE_CHUNK) as progress:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                batch = [newline_safe(text) for text in texts[start : start + TOKENIZE_CHUNK]]
                encoded = tokenizer(batch, max_length=max_length, truncation=True, return_overflowing_tokens=True,
                                    return_special_tokens_mask=True, return_attention_mask=False,
                                    return_token_type_ids=False)
                for i, essay in enumerate(encoded["overflow_to_sample_mapping"]):
                    input_ids.append(encoded["input_ids"][i])
                    words.append(_number_words(encoded.word_ids(i), encoded["special_tokens_mask"][i]))
                    essay_index.append(start + essay)
                progress.update(len(batch))
    finally:
        tokenizer.truncation_side = previous_side
    chunks = EssayChunks(input_ids, words, np.asarray(essay_index, dtype=np.int64))
    log.info("%d essays -> %d chunks of at most %d tokens (%d tokens in all)", len(texts), len(chunks),
             max_length, sum(len(ids) for ids in input_ids))
    return chunks


def _number_words(word_ids: list[int | None], special: list[int]) -> list[int]:
    """0, 1, ... per word of a chunk from the tokenizer's word ids; -1 at special tokens.

    A token without a word id that is not special (none is known, but the tokenizer allows it) is a word
    of its own.
    """
    numbers, current, previous = [], -1, None
    for word_id, is_special in zip(word_ids, special, strict=True):
        if is_special:
            numbers.append(-1)
            previous = None
            continue
        if word_id is None or word_id != previous:
            current += 1
        numbers.append(current)
        previous = word_id
    return numbers


def held_out_essays(n_essays: int, share: float, seed: int) -> np.ndarray:
    """Boolean mask of the essays held out for evaluation: round(share * n), at least one when share > 0.

    At least one essay is always left to train on.
    """
    if not 0 <= share < 1:
        raise ValueError(f"held_out_share must be in [0, 1), got {share}")
    mask = np.zeros(n_essays, dtype=bool)
    if share == 0:
        return mask
    if n_essays < 2:
        raise ValueError(f"held_out_share={share} needs at least 2 essays (one to hold out, one to train on), "
                         f"got {n_essays}")
    n_held = min(max(1, round(share * n_essays)), n_essays - 1)
    mask[np.random.default_rng(seed).permutation(n_essays)[:n_held]] = True
    return mask


class MaskingCollator:
    """Chunks -> a padded, masked batch: input_ids, attention_mask and labels, each (batch, width) int64.

    The batch is padded on the right to its longest chunk, rounded up to `pad_to_multiple_of` (dynamic
    padding). Which tokens are masked, and what replaces them, is transformers'
    `DataCollatorForLanguageModeling`: every token other than special tokens and padding is picked with
    probability `mlm_probability`; a pick becomes [MASK] 80% of the time, a random token 10%, and stays
    10%. labels hold the original id at picked positions and -100 elsewhere.

    With `whole_word_masking`, each word is picked with `mlm_probability` and all of its tokens become
    [MASK] (transformers does no random replacement for whole words). transformers finds words in
    character offsets -- a new word wherever a token does not start where the previous one ended -- but
    sentencepiece tokenizers (deberta-v3's) count the space before a word into its first piece, so every
    token touches the previous one and a whole chunk would read as one word. The collator therefore
    hands transformers offsets built from the tokenizer's word ids (`EssayChunks.words`): touching
    within a word, a gap of one between words.

    Masks are drawn from the collator's own generator seeded with `seed`, so the same seed and the same
    sequence of batches give the same masks whatever else draws random numbers (dropout).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, mlm_probability: float = 0.15,
                 whole_word_masking: bool = False, seed: int = 0, pad_to_multiple_of: int | None = 8):
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if tokenizer.pad_token_id is None or tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no PAD or no MASK token: masked-language "
                             "modelling needs both (load it with common.models.tokenization.load_tokenizer)")
        self.multiple = pad_multiple(pad_to_multiple_of)
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word_masking else {}
        self.masker = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability,
                                                      whole_word_mask=whole_word_masking, **replace)
        self.masker.generator = self.masker.get_generator(seed)
        self.whole_word_masking = whole_word_masking
        self.pad_id = int(tokenizer.pad_token_id)

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        width = batch_width(items, self.multiple, "MaskingCollator")
        input_ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        words = torch.full((len(items), width), -1, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            words[row, :n] = torch.tensor(item["words"], dtype=torch.long)
            attention_mask[row, :n] = 1
        special = words < 0
        offsets = _word_offsets(words) if self.whole_word_masking else None
        masked, labels = self.masker.torch_mask_tokens(input_ids, special_tokens_mask=special,
                                                       offset_mapping=offsets)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}


def _word_offsets(words: torch.Tensor) -> torch.Tensor:
    """(batch, width, 2) character offsets in which a token starts where the previous one ended exactly
    when both are in the same word: the only thing transformers reads from offsets for whole words."""
    new_word = torch.ones_like(words, dtype=torch.bool)
    new_word[:, 1:] = words[:, 1:] != words[:, :-1]
    start = torch.arange(words.shape[1]) + new_word.long().cumsum(dim=1)
    return torch.stack([start, start + 1], dim=-1)


def fixed_mask_batches(items: Sequence[dict], collator: MaskingCollator, batch_size: int) -> list[dict]:
    """Masked evaluation batches drawn once, longest chunks first: measure before and after on these.

    The masks depend only on the items and the collator's seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort([-len(item["input_ids"]) for item in items], kind="stable")
    return [collator([items[i] for i in order[start : start + batch_size]])
            for start in range(0, len(order), batch_size)]


def _autocast(device: torch.device, mixed_precision: str):
    """Autocast to a resolved training precision (bf16 or fp16) on CUDA; nothing on CPU or with 'no'."""
    dtype = autocast_dtype(mixed_precision, device) if device.type == "cuda" else None
    return torch.autocast(device_type="cuda", dtype=dtype) if dtype is not None else nullcontext()


def _masked_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the cross-entropy over the masked tokens, their count), in float32.

    A sum and a count rather than the model's own mean, so that losses are averaged over tokens rather
    than batches, and a batch with nothing masked adds nothing instead of a NaN.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    picked = batch["labels"] != IGNORE_INDEX
    loss_sum = F.cross_entropy(logits[picked].float(), batch["labels"][picked], reduction="sum")
    return loss_sum, picked.sum()


@torch.no_grad()
def masked_lm_loss(model: nn.Module, batches: Sequence[dict], device: torch.device | str = "cpu",
                   mixed_precision: str = "no") -> float:
    """Mean cross-entropy (nats per masked token) of the model on already-masked batches, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    try:
        for batch in tqdm(batches, desc="mlm eval", unit="batch", leave=False, disable=len(batches) < 20):
            with _autocast(device, mixed_precision):
                loss_sum, n = _masked_token_loss(model, {k: v.to(device) for k, v in batch.items()})
            total += loss_sum.double().cpu()
            count += int(n)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no masked token in the evaluation batches: too few held-out tokens to measure a loss")
    return float(total / count)


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


def _unique_essays(texts: Sequence[str]) -> list[str]:
    """Texts in their first order, each exact duplicate (after unifying line endings and outer spaces)
    dropped."""
    seen: set[str] = set()
    unique = []
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"essay text at row {row} is {type(text).__name__} ({text!r}), not a string")
        key = newline_safe(text).strip()
        if key not in seen:
            seen.add(key)
            unique.append(text)
    return unique


@dataclass
class _Progress:
    """Where an MLM run stands (what a checkpoint holds besides tensors)."""

    epoch: int = 0
    step: int = 0
    tokens: int = 0
    masked: int = 0
    seconds: float = 0.0


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],  # biases, norms: no decay
        lr=lr,
    )


def _train(model: nn.Module, items: list[dict], collator: MaskingCollator, engine: Engine, *, epochs: float,
           batch_size: int, lr: float, weight_decay: float, warmup_ratio: float, max_grad_norm: float, seed: int,
           checkpoint: Path | None = None, fingerprint: str = "") -> dict:
    """The training loop on the shared engine; a checkpoint at each epoch end (when `checkpoint` is given)
    resumes it exactly. Returns steps, masked tokens, tokens seen and seconds."""
    lengths = np.array([len(item["input_ids"]) for item in items])
    rows = np.arange(len(items))
    per_epoch = len(epoch_batches(lengths, rows, batch_size, seed, 0, engine.rank, engine.world))
    total_steps = max(1, math.ceil(epochs * per_epoch))
    optimizer = _optimizer(model, lr, weight_decay)
    scheduler = build_scheduler(optimizer, "linear", total_steps, warmup_ratio)
    state = _Progress()
    resume = read_checkpoint(checkpoint, fingerprint) if checkpoint is not None else None
    if resume is not None:
        state = _Progress(**resume["state"])
        model.load_state_dict(resume["model"])
        log.info("MLM: resuming at epoch %d, step %d", state.epoch, state.step)
    ddp_model, optimizer = engine.prepare(model, optimizer)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        engine.load_scaler_state(resume["scaler"])
        collator.masker.generator.set_state(resume["masks"])
        set_rng_state(resume["rng"])
    log.info("MLM training: %d chunks, batch %d, %d steps (%.3g epochs), lr %.3g, %s, mixed precision %s, %d "
             "process(es)", len(items), batch_size, total_steps, epochs, lr, engine.device, engine.precision,
             engine.world)
    ddp_model.train()
    started = time.perf_counter() - state.seconds
    with tqdm(total=total_steps, initial=state.step, desc="mlm", unit="step", disable=not engine.is_main) as bar:
        while state.step < total_steps:
            batches = epoch_batches(lengths, rows, batch_size, seed, state.epoch, engine.rank, engine.world)
            loader = torch.utils.data.DataLoader(items, batch_sampler=batches, collate_fn=collator)
            for batch in loader:
                loss, n = _mlm_step(ddp_model, {k: v.to(engine.device) for k, v in batch.items()}, optimizer,
                                    scheduler, engine, max_grad_norm, state.step)
                state.step += 1
                state.tokens += int(batch["attention_mask"].sum()) * engine.world
                state.masked += n
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if state.step == total_steps:
                    break
            state.epoch += 1
            if checkpoint is not None and state.step < total_steps:
                state.seconds = time.perf_counter() - started
                engine.save_checkpoint(checkpoint, fingerprint, {
                    "state": asdict(state), "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": engine.scaler_state(), "masks": collator.masker.generator.get_state()}, state.step)
    return {"steps": state.step, "train_tokens_seen": state.tokens, "train_masked_tokens": state.masked,
            "train_seconds": time.perf_counter() - started}


def _mlm_step(model: nn.Module, batch: dict[str, torch.Tensor], optimizer, scheduler, engine: Engine,
              max_grad_norm: float, step: int) -> tuple[float, int]:
    """One optimizer step on one batch: (its loss per masked token, its masked tokens)."""
    with engine.autocast():
        loss_sum, n = _masked_token_loss(model, batch)
    loss = loss_sum / n.clamp(min=1)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"MLM loss is {loss.item()} at step {step}: lower the learning rate or use mixed_precision='bf16' "
            f"or 'no' (now {engine.precision!r})"
        )
    engine.backward(loss)
    engine.step(model, optimizer, scheduler, max_grad_norm)
    return loss.item(), int(n)


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
    corpus = _Corpus.build(tokenizer, texts, settings)
    model.to(engine.device)
    evaluate = corpus.eval_batches
    before = masked_lm_loss(model, evaluate, engine.device, engine.precision) if evaluate else None
    trained = _train(model, corpus.train_items,
                     MaskingCollator(tokenizer, mlm_probability, whole_word_masking, seed=seed), engine,
                     epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                     warmup_ratio=warmup_ratio, max_grad_norm=max_grad_norm, seed=seed, checkpoint=checkpoint,
                     fingerprint=fingerprint)
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


@dataclass
class _Corpus:
    """The unique essays cut into chunks, split by essay into training chunks and fixed-mask held-out batches."""

    essays: list[str]
    chunks: EssayChunks
    held_essays: np.ndarray  # (n_essays,) bool
    held_out: np.ndarray  # (n_chunks,) bool
    train_items: list[dict]
    eval_batches: list[dict]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], settings: dict) -> _Corpus:
        essays = _unique_essays(texts)
        if len(essays) < len(texts):
            log.info("%d of %d essays are exact duplicates of earlier ones: each is used once",
                     len(texts) - len(essays), len(texts))
        if not essays:
            raise ValueError("adapt_backbone got no essays to train on")
        chunks = essay_chunks(tokenizer, essays, settings["max_length"])
        held_essays = held_out_essays(len(essays), settings["held_out_share"], settings["seed"])
        held_out = held_essays[chunks.essay_index]
        masker = MaskingCollator(tokenizer, settings["mlm_probability"], settings["whole_word_masking"],
                                 seed=derived_seed(settings["seed"], 1))
        eval_batches = fixed_mask_batches(chunks.items(np.flatnonzero(held_out)), masker, settings["batch_size"])
        return cls(essays, chunks, held_essays, held_out, chunks.items(np.flatnonzero(~held_out)), eval_batches)

    def counts(self, n_texts: int) -> dict[str, int]:
        return {
            "n_essays": len(self.essays),
            "n_duplicates_dropped": n_texts - len(self.essays),
            "n_train_essays": int((~self.held_essays).sum()),
            "n_held_out_essays": int(self.held_essays.sum()),
            "n_chunks": len(self.chunks),
            "n_train_chunks": len(self.train_items),
            "n_held_out_chunks": int(self.held_out.sum()),
            "held_out_masked_tokens": int(sum((b["labels"] != IGNORE_INDEX).sum() for b in self.eval_batches)),
        }


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
