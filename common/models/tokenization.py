"""Tokenising essays, and batching them so that little compute goes to padding.

- `load_tokenizer` loads a backbone's tokenizer from a local folder or the Hugging Face cache (never
  the network), pads with EOS/SEP when the tokenizer has no PAD token, and with `add_newline_tokens`
  keeps paragraph breaks: deberta-v3's normaliser turns every newline into a space, so "\\n" is added
  as a token matched on the raw text, before normalisation (`normalized=False`); "\\n\\n" becomes two
  such tokens. The model's embeddings must then be resized to `len(tokenizer)` (the caller's job).
- `newline_safe` writes every line ending as "\\n"; `tokenize_essays` applies it to every text, so
  training and inference see the same tokens. It returns unpadded ids.
- `EssayCollator` pads each batch to its own longest essay (dynamic padding).
- `TokenSettings`: the model settings that decide its token ids and batches, said once for training and inference.
Which essays share a batch (length-grouped, so that dynamic padding pays off) is `common.models.batching`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from tokenizers import AddedToken
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from common.config.model_params import ModelParams

log = logging.getLogger(__name__)

NEWLINE_TOKEN = "\n"
"""The token added by `load_tokenizer(add_newline_tokens=True)`; a paragraph break is two of them."""

TOKENIZE_CHUNK = 1000
"""Texts per call to the fast tokenizer (a call tokenises its batch in parallel, in Rust)."""

_LINE_ENDINGS = re.compile(r"\r\n?")


def load_tokenizer(
    name_or_path: str, add_newline_tokens: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, with a PAD token and, optionally, a newline token.

    Args:
        name_or_path: a local folder, or a hub name already in the Hugging Face cache (no download).
        add_newline_tokens: add "\\n" as a token when the tokenizer drops newlines (nothing is added
            to a tokenizer that keeps them, or already has the token: idempotent).
        padding_side: "right" or "left"; `EssayCollator` pads on this side.

    Raises:
        FileNotFoundError: the tokenizer is neither in that folder nor in the local cache.
        ValueError: a bad padding_side, or no PAD, EOS or SEP token to pad with.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"backbone {name_or_path!r}: no tokenizer could be found locally ({exc}). Fix: set the backbone "
            "to a local model folder (config.json, tokenizer files, weights), or to a hub name that is in "
            f"the Hugging Face cache (download it once where there is internet: `hf download {name_or_path}`)."
        ) from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.sep_token
        if fallback is None:
            raise ValueError(
                f"tokenizer of {name_or_path!r} has no PAD, EOS or SEP token to pad with; "
                "add a pad token to its tokenizer_config.json"
            )
        tokenizer.pad_token = fallback
        log.info("tokenizer of %s has no PAD token: padding with %r", name_or_path, fallback)
    tokenizer.padding_side = padding_side
    if add_newline_tokens and _drops_newlines(tokenizer):
        tokenizer.add_tokens([AddedToken(NEWLINE_TOKEN, normalized=False, special=False)])
        newline_id = tokenizer.convert_tokens_to_ids(NEWLINE_TOKEN)
        kept = tokenizer("a\n\nb", add_special_tokens=False)["input_ids"]
        if kept.count(newline_id) != 2:
            raise ValueError(f"tokenizer of {name_or_path!r} still drops newlines after adding {NEWLINE_TOKEN!r}")
        log.info("tokenizer of %s drops newlines: added %r as token %d (resize the embeddings to %d)",
                 name_or_path, NEWLINE_TOKEN, newline_id, len(tokenizer))
    return tokenizer


def _drops_newlines(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when "a\\nb" and "a b" give the same ids (the newline became a plain space)."""
    with_newline = tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    with_space = tokenizer("a b", add_special_tokens=False)["input_ids"]
    return with_newline == with_space


def newline_safe(text: str) -> str:
    """The text with every line ending ("\\r\\n", "\\r") written as "\\n", the form the newline token matches."""
    return _LINE_ENDINGS.sub("\n", text)


TRUNCATION_SIDES = ("right", "left", "head_tail")
HEAD_TAIL_SHARE = 0.25
"""With truncation_side="head_tail", the share of a long essay's token budget kept from its beginning; the rest
comes from its end (an essay's conclusion says much about its score)."""


def special_frame(tokenizer: PreTrainedTokenizerBase, add_special_tokens: bool = True) -> tuple[int, int]:
    """How many special tokens the tokenizer puts before and after an essay's own tokens ((0, 0) without)."""
    if not add_special_tokens:
        return 0, 0
    special = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)["special_tokens_mask"]
    n_front = next((i for i, flag in enumerate(special) if not flag), len(special))
    n_back = next((i for i, flag in enumerate(reversed(special)) if not flag), 0)
    return n_front, n_back


def window_capacity(max_length: int, windows: int, overlap: int, n_special: int) -> int:
    """Tokens of one essay, special tokens included, that `windows` windows of `max_length` tokens hold when
    consecutive windows share `overlap` essay tokens (each window repeats the special tokens)."""
    if windows <= 1:
        return max_length
    body = max_length - n_special
    if not 0 <= overlap < body:
        raise ValueError(f"window_overlap={overlap} must be in [0, {body}): max_length={max_length} leaves {body} "
                         "essay tokens per window")
    return n_special + body + (windows - 1) * (body - overlap)


def split_windows(ids: Sequence[int], max_length: int, overlap: int, n_front: int, n_back: int) -> list[list[int]]:
    """An essay's token ids as windows of at most `max_length` tokens, each between the essay's special tokens.

    An essay that fits is one window, unchanged. Otherwise windows of max_length - n_front - n_back essay tokens
    start every (that - overlap) tokens; the last one is moved back to end at the essay's last token, so every
    window is full and together they cover every token.
    """
    ids = list(ids)
    if len(ids) <= max_length:
        return [ids]
    front, body, back = ids[:n_front], ids[n_front : len(ids) - n_back], ids[len(ids) - n_back :]
    size = max_length - n_front - n_back
    if not 0 <= overlap < size:
        raise ValueError(f"window overlap {overlap} must be in [0, {size}) for windows of {size} essay tokens")
    windows, start = [], 0
    while True:
        windows.append(front + body[start : start + size] + back)
        if start + size >= len(body):
            return windows
        start = min(start + size - overlap, len(body) - size)


def tokenize_essays(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    add_special_tokens: bool = True,
    truncation_side: str = "right",
    windows: int = 1,
    window_overlap: int = 0,
) -> list[list[int]]:
    """Token ids per essay (special tokens included), truncated to `max_length`, not padded.

    `truncation_side`: "right" keeps an essay's beginning, "left" its end, "head_tail" both: the first
    HEAD_TAIL_SHARE of the budget and the end (essays that fit are whole either way). With `windows` > 1 the
    budget is what that many windows of max_length hold (`window_capacity`; the collator cuts the windows).
    The tokenizer is left as it was found.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    if windows < 1:
        raise ValueError(f"windows must be >= 1, got {windows}")
    if windows > 1:
        max_length = window_capacity(max_length, windows, window_overlap, sum(special_frame(tokenizer,
                                                                                           add_special_tokens)))
    if truncation_side not in TRUNCATION_SIDES:
        raise ValueError(f"truncation_side must be one of {', '.join(TRUNCATION_SIDES)}, got {truncation_side!r}")
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"essay text at row {row} is {type(text).__name__} ({text!r}), not a string")
    previous_side = tokenizer.truncation_side
    head_tail = truncation_side == "head_tail"
    tokenizer.truncation_side = "right" if head_tail else truncation_side
    ids: list[list[int]] = []
    try:
        with tqdm(total=len(texts), desc="tokenising", unit="essay", leave=False,
                  disable=len(texts) <= TOKENIZE_CHUNK) as progress:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                chunk = [newline_safe(text) for text in texts[start : start + TOKENIZE_CHUNK]]
                if head_tail:
                    ids.extend(_head_tail(tokenizer, chunk, max_length, add_special_tokens))
                else:
                    encoded = tokenizer(chunk, max_length=max_length, truncation=True,
                                        add_special_tokens=add_special_tokens, return_attention_mask=False,
                                        return_token_type_ids=False)
                    ids.extend(encoded["input_ids"])
                progress.update(len(chunk))
    finally:
        tokenizer.truncation_side = previous_side
    n_truncated = sum(len(x) == max_length for x in ids)
    log.info("tokenised %d essays: median %d tokens, %d at max_length=%d (truncated on the %s)", len(ids),
             int(np.median([len(x) for x in ids])) if ids else 0, n_truncated, max_length, truncation_side)
    return ids


def _head_tail(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, add_special_tokens: bool
               ) -> list[list[int]]:
    """The whole essay when it fits, else its first and last tokens between the tokenizer's special tokens."""
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_special_tokens_mask=True,
                        return_attention_mask=False, return_token_type_ids=False)
    out = []
    for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True):
        if len(ids) <= max_length:
            out.append(ids)
            continue
        n_front = next((i for i, flag in enumerate(special) if not flag), len(ids))
        n_back = next((i for i, flag in enumerate(reversed(special)) if not flag), 0)
        budget = max_length - n_front - n_back
        if budget < 2:
            raise ValueError(f"max_length={max_length} leaves {budget} tokens besides the special ones: too few to "
                             "keep a head and a tail")
        out.append(cut_tokens(ids, max_length, n_front, n_back, "head_tail"))
    return out


def cut_tokens(ids: Sequence[int], length: int, n_front: int, n_back: int, side: str) -> list[int]:
    """Token ids (special tokens at the ends) cut to `length` as `truncation_side` cuts a text: its beginning
    (right), its end (left) or both (head_tail), the special tokens kept. Ids that fit are returned whole."""
    ids = list(ids)
    if len(ids) <= length:
        return ids
    budget = length - n_front - n_back
    if budget < 2:
        raise ValueError(f"length {length} leaves {budget} tokens besides the special ones")
    front, body, back = ids[:n_front], ids[n_front : len(ids) - n_back], ids[len(ids) - n_back :]
    if side == "right":
        kept = body[:budget]
    elif side == "left":
        kept = body[len(body) - budget :]
    else:
        head = max(1, round(HEAD_TAIL_SHARE * budget))
        kept = body[:head] + body[len(body) - (budget - head) :]
    return front + kept + back


def pad_multiple(pad_to_multiple_of: int | None) -> int:
    """The multiple a collator rounds batch widths up to (1 for None); refuses values below 1."""
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
    return pad_to_multiple_of or 1


def batch_width(items: Sequence[dict], multiple: int, collator: str) -> int:
    """Width of a dynamically padded batch: its longest `input_ids`, rounded up to `multiple`."""
    if not items:
        raise ValueError(f"{collator} got an empty batch")
    longest = max(len(item["input_ids"]) for item in items)
    return -(-longest // multiple) * multiple


class EssayCollator:
    """List of {"input_ids", "target"?, "index"?} -> dict of tensors (dynamic padding).

    Returns input_ids and attention_mask of shape (batch, width), where width is the batch's longest
    essay rounded up to a multiple of `pad_to_multiple_of` (never max_length), padded with the PAD id
    on the tokenizer's padding side; "targets" as float32 (batch,) for hard scores or (batch, k) for
    soft labels, and "index" (batch,) int64, when the items have them.

    Sliding windows (`window` = max_length of a window, with `overlap` and the tokenizer's `frame` of special
    tokens): each essay becomes `split_windows` rows, input_ids and attention_mask are (windows in the batch,
    width), and "windows" (batch,) int64 says how many rows each essay has, in order (the scorer averages
    their logits). Training and inference build it with `model_collator`, so both cut the same windows.

    Token cutout (training augmentation): with `cutout` > 0 each real token other than the special ones is
    replaced by the mask token with that probability, drawn from torch's global RNG (which training seeds and
    checkpoints, so a resumed run draws the same masks). 0 draws nothing. Random crop (`crop`, the share of
    essays cut): such an essay becomes a random contiguous span of its tokens, half to all of them, between its
    special tokens (`frame`). Progressive max_length: `max_tokens`, when set, cuts every essay as `side`
    (its truncation_side) does. Training sets these; evaluation and inference see whole essays.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = 8, cutout: float = 0.0,
                 window: int | None = None, overlap: int = 0, frame: tuple[int, int] = (0, 0), crop: float = 0.0,
                 side: str = "right"):
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no PAD token: load it with common.models.tokenization.load_tokenizer")
        if not 0.0 <= cutout < 1.0:
            raise ValueError(f"cutout must be in [0, 1), got {cutout}")
        if cutout and tokenizer.mask_token_id is None:
            raise ValueError(f"{type(tokenizer).__name__} has no MASK token, so token cutout has nothing to put in")
        self.pad_id = int(tokenizer.pad_token_id)
        self.left = tokenizer.padding_side == "left"
        self.multiple = pad_multiple(pad_to_multiple_of)
        self.cutout = cutout
        self.mask_id = tokenizer.mask_token_id
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.window, self.overlap, self.frame = window, overlap, frame
        if not 0.0 <= crop <= 1.0:
            raise ValueError(f"crop must be in [0, 1], got {crop}")
        self.crop, self.side = crop, side
        self.max_tokens: int | None = None  # progressive max_length: training sets it per epoch

    def _random_span(self, row: list[int]) -> list[int]:
        """A random contiguous span of the essay's tokens, between half and all of them, specials kept."""
        n_front, n_back = self.frame
        body = row[n_front : len(row) - n_back]
        if len(body) < 4:
            return row
        size = int(torch.randint(len(body) // 2, len(body) + 1, ()).item())
        start = int(torch.randint(0, len(body) - size + 1, ()).item())
        return row[:n_front] + body[start : start + size] + row[len(row) - n_back :]

    def __call__(self, items: Sequence[dict]) -> dict[str, torch.Tensor]:
        counts = None
        rows = [list(item["input_ids"]) for item in items]
        if self.crop:
            rows = [self._random_span(row) if torch.rand(()).item() < self.crop else row for row in rows]
        if self.max_tokens is not None:
            rows = [cut_tokens(row, self.max_tokens, *self.frame, self.side) for row in rows]
        if self.window is not None:
            split = [split_windows(row, self.window, self.overlap, *self.frame) for row in rows]
            counts = torch.tensor([len(w) for w in split], dtype=torch.long)
            rows = [w for windows in split for w in windows]
        width = batch_width([{"input_ids": r} for r in rows], self.multiple, "EssayCollator")
        ids, mask = [], []
        for row in rows:
            n, pad = len(row), width - len(row)
            row_mask = [1] * n
            ids.append([self.pad_id] * pad + row if self.left else row + [self.pad_id] * pad)
            mask.append([0] * pad + row_mask if self.left else row_mask + [0] * pad)
        batch = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
        if counts is not None:
            batch["windows"] = counts
        if self.cutout:
            ids_t = batch["input_ids"]
            cut = (torch.rand(ids_t.shape) < self.cutout) & batch["attention_mask"].bool() & ~torch.isin(ids_t, self.special)
            batch["input_ids"] = ids_t.masked_fill(cut, self.mask_id)
        for key, out, dtype in (("target", "targets", torch.float32), ("index", "index", torch.long)):
            present = sum(key in item for item in items)
            if present == len(items):
                batch[out] = torch.tensor([item[key] for item in items], dtype=dtype)
            elif present:
                raise ValueError(f"{present} of {len(items)} items in the batch have {key!r}: all or none must")
        return batch


@dataclass(frozen=True)
class TokenSettings:
    """The model settings (ModelParams fields, saved in each fold's train_config.json) that decide its token ids and
    batches: training and inference both build them with `TokenSettings.of`, so both read the same ones."""

    max_length: int
    add_newline_tokens: bool
    padding_side: str
    truncation_side: str
    add_special_tokens: bool
    windows: int
    window_overlap: int

    @classmethod
    def of(cls, model: ModelParams | Mapping[str, Any]) -> TokenSettings:
        """A model's settings: its ModelParams, or a fold's train_config.json["model"], where a setting left out at
        its default (or saved before the setting existed) takes ModelParams' default, the one place it is said."""
        if isinstance(model, ModelParams):
            return cls(**{f.name: getattr(model, f.name) for f in fields(cls)})
        defaults = {f.name: f.default for f in fields(ModelParams)}
        return cls(**{f.name: model.get(f.name, defaults[f.name]) for f in fields(cls)})


def model_collator(tokenizer: PreTrainedTokenizerBase, settings: TokenSettings, cutout: float = 0.0,
                   crop: float = 0.0) -> EssayCollator:
    """The collator of a model's batches: whole essays, or its sliding windows when settings.windows > 1. `cutout`
    and `crop` are training augmentations (evaluation and inference leave them 0)."""
    frame = special_frame(tokenizer, settings.add_special_tokens)
    side = settings.truncation_side
    if settings.windows <= 1:
        return EssayCollator(tokenizer, cutout=cutout, frame=frame, crop=crop, side=side)
    return EssayCollator(tokenizer, cutout=cutout, window=settings.max_length, overlap=settings.window_overlap,
                         frame=frame, crop=crop, side=side)


def model_token_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], settings: TokenSettings
                    ) -> list[list[int]]:
    """`tokenize_essays` with a model's tokenisation settings (as `model_collator` takes them)."""
    return tokenize_essays(tokenizer, texts, settings.max_length, add_special_tokens=settings.add_special_tokens,
                           truncation_side=settings.truncation_side, windows=settings.windows,
                           window_overlap=settings.window_overlap)
