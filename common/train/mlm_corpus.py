"""The corpus of MLM domain adaptation: essays cut into chunks, split by essay, and masked.

- Essays are tokenised as training tokenises them (`newline_safe`, the same tokenizer and newline token) but cut
  into `max_length` chunks instead of truncated, so no text is wasted; the first chunk of an essay is exactly
  what `tokenize_essays` gives (`essay_chunks`). Exact duplicate essays (train.csv is largely a copy of part of
  the persuade corpus) are kept once, so that no held-out essay is also trained on.
- A seeded share of essays (never single chunks) is held out (`held_out_essays`); its batches are masked once
  (`fixed_mask_batches`), so a loss measured on them before and after training differs only by the weights.
- Masks come from transformers' `DataCollatorForLanguageModeling`, fed by `MaskingCollator`.
`MlmCorpus.build` does all three for `common.train.mlm.adapt_backbone`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

from common.models.tokenization import TOKENIZE_CHUNK, batch_width, newline_safe, pad_multiple
from common.train.engine import derived_seed

log = logging.getLogger(__name__)

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


def unique_essays(texts: Sequence[str]) -> list[str]:
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
class MlmCorpus:
    """The unique essays cut into chunks, split by essay into training chunks and fixed-mask held-out batches."""

    essays: list[str]
    chunks: EssayChunks
    held_essays: np.ndarray  # (n_essays,) bool
    held_out: np.ndarray  # (n_chunks,) bool
    train_items: list[dict]
    eval_batches: list[dict]

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], settings: dict) -> MlmCorpus:
        essays = unique_essays(texts)
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
