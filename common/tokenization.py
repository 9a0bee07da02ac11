"""Tokenising essays, and batching them so little compute goes to padding.

- `load_tokenizer` loads any backbone's tokenizer from a local folder or the Hugging Face cache, falls
  back to EOS/SEP when there is no PAD token, and can keep paragraph breaks: DeBERTa-v3's tokenizer
  turns every newline into a plain space, so with `add_newline_tokens` each "\\n" is written as the
  added token "[BR]" before tokenising (`newline_safe`) -- the same function at training and inference.
- `tokenize_essays` returns unpadded token ids; `EssayCollator` pads each batch to its own longest essay.
- `LengthGroupedSampler` (training) and `batches_by_token_budget` (inference) put essays of similar
  length together, which is what makes dynamic padding pay off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

NEWLINE_TOKEN = "[BR]"


def load_tokenizer(
    name_or_path: str, add_newline_tokens: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, with a PAD token and (optionally) a newline token."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"backbone {name_or_path!r} could not be loaded ({exc}). Fix: point the backbone at a local model "
            "folder (config.json, tokenizer and weights), or at a Hugging Face name that is in the local cache."
        ) from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.sep_token
        if fallback is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has no PAD, EOS or SEP token to pad with")
        tokenizer.pad_token = fallback
        log.info("tokenizer of %s has no PAD token: padding with %r", name_or_path, fallback)
    tokenizer.padding_side = padding_side
    if add_newline_tokens and NEWLINE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([NEWLINE_TOKEN], special_tokens=True)
    return tokenizer


def newline_safe(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The text as the tokenizer should see it: newlines as NEWLINE_TOKEN when the tokenizer has it."""
    if NEWLINE_TOKEN in tokenizer.get_vocab():
        return text.replace("\r\n", "\n").replace("\n", f" {NEWLINE_TOKEN} ")
    return text


def tokenize_essays(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    add_special_tokens: bool = True,
    truncation_side: str = "right",
    chunk_size: int = 1000,
) -> list[list[int]]:
    """Token ids per essay, truncated to `max_length`, not padded."""
    tokenizer.truncation_side = truncation_side
    ids: list[list[int]] = []
    for start in tqdm(range(0, len(texts), chunk_size), desc="tokenising", unit="chunk", leave=False,
                      disable=len(texts) <= chunk_size):
        chunk = [newline_safe(t, tokenizer) for t in texts[start : start + chunk_size]]
        encoded = tokenizer(chunk, max_length=max_length, truncation=True, add_special_tokens=add_special_tokens)
        ids.extend(encoded["input_ids"])
    return ids


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Indices in an order where neighbours have similar lengths, reshuffled per epoch, seeded.

    The indices are shuffled, cut into mega-batches of `batch_size * mega_batch_mult`, each sorted by
    length (longest first); the resulting batches are then shuffled. `shuffle=False` orders every
    index by length, longest first (evaluation).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 mega_batch_mult: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.shuffle, self.mega = batch_size, seed, shuffle, mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(np.argsort(-self.lengths, kind="stable").tolist())
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            mega = order[start : start + size]
            mega = mega[np.argsort(-self.lengths[mega], kind="stable")]
            batches.extend(mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size))
        batch_order = rng.permutation(len(batches))
        return iter(np.concatenate([batches[i] for i in batch_order]).tolist() if batches else [])


def batches_by_token_budget(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Inference batches, longest essays first: batch size x longest length <= max_tokens (>= 1 essay)."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order.tolist():
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class EssayCollator:
    """List of {"input_ids", "target"?} -> padded tensors: input_ids, attention_mask, targets.

    Pads to the batch's longest essay (rounded up to `pad_to_multiple_of`), on the tokenizer's
    padding side. Targets are (batch,) hard scores or (batch, 6) soft labels.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int = 8):
        self.pad_id = tokenizer.pad_token_id
        self.left = tokenizer.padding_side == "left"
        self.multiple = pad_to_multiple_of

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        width = -(-longest // self.multiple) * self.multiple
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            cols = slice(width - n, width) if self.left else slice(0, n)
            ids[row, cols] = torch.tensor(item["input_ids"], dtype=torch.long)
            mask[row, cols] = 1
        batch = {"input_ids": ids, "attention_mask": mask}
        if "target" in items[0]:
            batch["targets"] = torch.tensor([item["target"] for item in items], dtype=torch.float32)
        return batch
