"""Tokenizer loading, the newline token, essays to ids, the collator, length-grouped batches."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from common.models.batching import LengthGroupedSampler, batches_by_token_budget
from common.models.tokenization import (
    NEWLINE_TOKEN,
    EssayCollator,
    TokenSettings,
    load_tokenizer,
    model_collator,
    newline_safe,
    special_frame,
    split_windows,
    tokenize_essays,
    window_capacity,
)
from tests.conftest import BACKBONE

ESSAY = "Cars are useful.\n\nBut they pollute the air. \n\n In conclusion, cars."


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenize_essays(tokenizer, [text], 128, add_special_tokens=False)[0]


def byte_level_tokenizer(folder: Path, eos: str | None = "<|endoftext|>") -> str:
    """A GPT-2-style tokenizer (byte-level BPE, keeps newlines, no PAD), saved to `folder`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [eos] if eos else []
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([ESSAY, "a b c\nd e f", "The quick brown fox."] * 5, trainer)
    kwargs = {"eos_token": eos, "bos_token": eos} if eos else {}
    PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer(BACKBONE)


@pytest.fixture(scope="module")
def tiny_nl():
    return load_tokenizer(BACKBONE, add_newline_tokens=True)


def test_the_tiny_tokenizer_drops_newlines_like_deberta_v3(tiny):
    assert ids_of(tiny, ESSAY) == ids_of(tiny, " ".join(ESSAY.split()))


def test_newline_tokens_survive_the_whitespace_normaliser(tiny, tiny_nl):
    newline_id = tiny_nl.convert_tokens_to_ids(NEWLINE_TOKEN)
    assert len(tiny_nl) == len(tiny) + 1 and newline_id == len(tiny)
    assert ids_of(tiny_nl, "a\n\nb").count(newline_id) == 2
    ids = ids_of(tiny_nl, ESSAY)
    assert ids.count(newline_id) == 4
    # the words keep their ids: only the newline tokens are new
    assert [i for i in ids if i != newline_id] == ids_of(tiny, ESSAY)
    # every line ending is one newline: Windows and old Mac files tokenise like Unix ones
    assert ids_of(tiny_nl, ESSAY.replace("\n", "\r\n")) == ids == ids_of(tiny_nl, ESSAY.replace("\n", "\r"))
    assert newline_safe("a\r\n\r\nb\rc") == "a\n\nb\nc"


def test_adding_newline_tokens_is_idempotent(tmp_path, tiny_nl):
    tiny_nl.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path), add_newline_tokens=True)
    assert len(again) == len(tiny_nl)
    assert again.convert_tokens_to_ids(NEWLINE_TOKEN) == tiny_nl.convert_tokens_to_ids(NEWLINE_TOKEN)
    assert ids_of(again, ESSAY) == ids_of(tiny_nl, ESSAY)


def test_a_tokenizer_that_keeps_newlines_gets_nothing_added_and_pads_with_eos(tmp_path):
    folder = byte_level_tokenizer(tmp_path / "bpe")
    plain = load_tokenizer(folder)
    assert plain.pad_token == plain.eos_token == "<|endoftext|>"
    assert plain.pad_token_id == plain.eos_token_id
    kept = load_tokenizer(folder, add_newline_tokens=True)
    assert len(kept) == len(plain)
    assert ids_of(kept, "a\nb") != ids_of(kept, "a b")


def test_pad_falls_back_to_eos_and_fails_clearly_without_one(tmp_path):
    tok = load_tokenizer(BACKBONE)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "tiny")
    reloaded = load_tokenizer(str(tmp_path / "tiny"))
    assert reloaded.pad_token == reloaded.eos_token == "[SEP]"
    with pytest.raises(ValueError, match="no PAD, EOS or SEP"):
        load_tokenizer(byte_level_tokenizer(tmp_path / "bare", eos=None))


def test_missing_backbone_is_a_clear_error(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"nope.*could be found locally.*local model folder.*cache"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="microsoft/no-such-model"):
        load_tokenizer("microsoft/no-such-model")
    with pytest.raises(ValueError, match="padding_side"):
        load_tokenizer(BACKBONE, padding_side="middle")


def test_truncation_sides_and_special_tokens(tiny):
    ids = tokenize_essays(tiny, ["word " * 200], 32)[0]
    assert len(ids) == 32 and ids[0] == tiny.cls_token_id and ids[-1] == tiny.sep_token_id
    text = "first words " + "middle " * 100 + "last words"
    left = tiny.decode(tokenize_essays(tiny, [text], 16, truncation_side="left")[0])
    right = tiny.decode(tokenize_essays(tiny, [text], 16, truncation_side="right")[0])
    assert "last words" in left and "first" not in left
    assert "first words" in right and "last" not in right
    assert tiny.truncation_side == "right"  # left as it was found
    assert len(tokenize_essays(tiny, ["short"], 32, add_special_tokens=False)[0]) < 4


def test_head_tail_keeps_both_ends_of_a_long_essay_and_short_ones_whole(tiny, tiny_nl):
    text = "first words " + "middle " * 100 + "last words"
    ids = tokenize_essays(tiny, [text], 32, truncation_side="head_tail")[0]
    assert len(ids) == 32 and ids[0] == tiny.cls_token_id and ids[-1] == tiny.sep_token_id
    both = tiny.decode(ids)
    assert "first words" in both and "last words" in both
    body = tiny(text, add_special_tokens=False)["input_ids"]
    assert ids[1:8] == body[:8 - 1] and ids[-9:-1] == body[-8:]  # a quarter of the 30 tokens from the start
    short = ["a short essay.", "two\n\nparagraphs here."]
    for tok in (tiny, tiny_nl):
        assert tokenize_essays(tok, short, 32, truncation_side="head_tail") == tokenize_essays(tok, short, 32)
    bare = tokenize_essays(tiny, [text], 32, add_special_tokens=False, truncation_side="head_tail")[0]
    assert len(bare) == 32 and bare[:8] == body[:8] and bare[-24:] == body[-24:]
    with pytest.raises(ValueError, match="truncation_side must be one of"):
        tokenize_essays(tiny, [text], 32, truncation_side="middle")


def test_sliding_windows_cover_a_long_essay_between_its_special_tokens(tiny):
    text = "first words " + "middle " * 100 + "last words"
    frame = special_frame(tiny)
    assert frame == (1, 1) and special_frame(tiny, add_special_tokens=False) == (0, 0)
    whole = tiny(text)["input_ids"]
    capacity = window_capacity(32, 3, 6, 2)
    assert capacity == 2 + 30 + 2 * 24
    ids = tokenize_essays(tiny, [text], 32, windows=3, window_overlap=6)[0]
    assert ids == [*whole[: capacity - 1], tiny.sep_token_id]  # three windows' worth, cut on the right
    windows = split_windows(ids, 32, 6, *frame)
    assert len(windows) == 3 and all(len(w) == 32 for w in windows)
    assert all(w[0] == tiny.cls_token_id and w[-1] == tiny.sep_token_id for w in windows)
    bodies = [w[1:-1] for w in windows]
    assert bodies[0][-6:] == bodies[1][:6] and bodies[1][-6:] == bodies[2][:6]  # neighbours share 6 tokens
    assert bodies[0] + bodies[1][6:] + bodies[2][6:] == ids[1:-1]  # together: every token, in order
    # The last window ends at the essay's end, whole: it starts earlier when the rest is short.
    longer = [*ids[: capacity - 10], tiny.sep_token_id]
    last = split_windows(longer, 32, 6, *frame)[-1]
    assert len(last) == 32 and last[-2] == longer[-2]
    assert split_windows(whole[:20], 32, 6, *frame) == [whole[:20]]  # an essay that fits: one window
    short = ["a short essay.", "two\n\nparagraphs here."]
    assert tokenize_essays(tiny, short, 32, windows=3, window_overlap=6) == tokenize_essays(tiny, short, 32)
    with pytest.raises(ValueError, match="window_overlap=30 must be in"):
        tokenize_essays(tiny, [text], 32, windows=2, window_overlap=30)


def test_the_window_collator_says_how_many_rows_each_essay_has(tiny):
    text = "first words " + "middle " * 100 + "last words"
    settings = {"max_length": 32, "add_special_tokens": True, "truncation_side": "right", "windows": 4,
                "window_overlap": 8}
    ids = tokenize_essays(tiny, [text, "short one", text[:120]], 32, windows=4, window_overlap=8)
    batch = model_collator(tiny, TokenSettings.of(settings))([{"input_ids": row, "target": 3.0} for row in ids])
    counts = [len(split_windows(row, 32, 8, 1, 1)) for row in ids]
    assert counts[0] == 4 and counts[1] == 1 and batch["windows"].tolist() == counts
    assert batch["input_ids"].shape == (sum(counts), 32) and batch["targets"].shape == (3,)
    assert "windows" not in model_collator(tiny, TokenSettings.of({**settings, "windows": 1}))([{"input_ids": ids[1]}])


def test_random_crop_and_progressive_length_cut_training_essays_between_their_special_tokens(tiny):
    text = "first words " + "middle words here " * 30 + "last words"
    ids = tokenize_essays(tiny, [text], 128)[0]
    settings = TokenSettings.of({"max_length": 128, "add_special_tokens": True, "truncation_side": "head_tail"})
    torch.manual_seed(0)
    cropped = model_collator(tiny, settings, crop=1.0)([{"input_ids": ids}] * 8)
    body = ids[1:-1]
    for row, mask in zip(cropped["input_ids"].tolist(), cropped["attention_mask"].tolist(), strict=True):
        kept = row[: sum(mask)]
        assert kept[0] == tiny.cls_token_id and kept[-1] == tiny.sep_token_id
        span = kept[1:-1]
        assert len(body) // 2 <= len(span) <= len(body)
        assert any(body[i : i + len(span)] == span for i in range(len(body) - len(span) + 1))  # contiguous
    assert len({sum(m) for m in cropped["attention_mask"].tolist()}) > 1  # spans of several lengths
    progressive = model_collator(tiny, settings)
    progressive.max_tokens = 20
    batch = progressive([{"input_ids": ids}])
    short = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert short == ids[:1] + body[:4] + body[-14:] + ids[-1:]  # cut as head_tail cuts: a quarter from the start
    whole = model_collator(tiny, settings)([{"input_ids": ids}])
    assert whole["input_ids"][0][whole["attention_mask"][0].bool()].tolist() == ids  # off: whole


def test_batched_tokenising_matches_one_by_one(tiny):
    texts = [f"Essay {i}: " + "words and more words " * (i % 7) for i in range(2500)]
    batched = tokenize_essays(tiny, texts, 64)
    assert len(batched) == len(texts)
    for i in (0, 999, 1000, 2499):
        assert batched[i] == tiny(texts[i], truncation=True, max_length=64)["input_ids"]


def test_a_missing_text_names_its_row(tiny):
    with pytest.raises(TypeError, match="row 1"):
        tokenize_essays(tiny, ["fine", float("nan")], 32)


def waste(lengths: np.ndarray, batches: list) -> float:
    """Share of padded positions when every batch is padded to its longest essay."""
    padded = sum(len(b) * lengths[b].max() for b in batches)
    return 1 - lengths.sum() / padded


def cut(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_length_grouped_sampler_is_complete_seeded_and_epoch_aware():
    lengths = np.random.default_rng(0).integers(10, 1000, size=403)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_mult=10)
    first = list(sampler)
    assert len(sampler) == 403 and sorted(first) == list(range(403))
    assert first == list(LengthGroupedSampler(lengths, batch_size=8, seed=3, mega_batch_mult=10))
    assert first != list(LengthGroupedSampler(lengths, batch_size=8, seed=4, mega_batch_mult=10))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(403))
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_length_grouped_batches_have_little_padding():
    rng = np.random.default_rng(1)
    lengths = rng.integers(80, 1024, size=1600)
    grouped = cut(list(LengthGroupedSampler(lengths, batch_size=8, seed=0)), 8)
    shuffled = cut(rng.permutation(1600).tolist(), 8)
    assert waste(lengths, grouped) < 0.03 < 0.3 < waste(lengths, shuffled)
    # each batch comes from one sorted mega-batch: the short batch is last, the longest essay first
    assert all(len(b) == 8 for b in grouped)
    assert np.argmax(lengths) in grouped[0]
    odd = cut(list(LengthGroupedSampler(lengths[:405], batch_size=8, seed=0)), 8)
    assert [len(b) for b in odd] == [8] * 50 + [5]
    assert waste(lengths[:405], odd) < 0.03


def test_unshuffled_order_is_longest_first():
    lengths = [5, 30, 30, 2, 100]
    assert list(LengthGroupedSampler(lengths, 2, seed=0, shuffle=False)) == [4, 1, 2, 0, 3]
    assert list(LengthGroupedSampler([], 2, seed=0)) == []


def test_token_budget_batches():
    lengths = [5, 100, 30, 30, 99, 1, 400, 50]
    batches = batches_by_token_budget(lengths, max_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert batches[0] == [6]  # longer than the budget alone: still predicted, alone
    for b in batches[1:]:
        assert len(b) * max(lengths[i] for i in b) <= 200
    assert batches == [[6], [1, 4], [7, 2, 3, 0], [5]]
    with pytest.raises(ValueError):
        batches_by_token_budget(lengths, 0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_pads_to_the_longest_essay_only(side):
    tok = load_tokenizer(BACKBONE, padding_side=side)
    items = [{"input_ids": [5, 6, 7], "target": 3.0, "index": 7}, {"input_ids": [5] * 10, "target": 5.0, "index": 2}]
    batch = EssayCollator(tok)(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 16)  # 10 rounded up to 8k, not 512
    assert batch["attention_mask"].sum(1).tolist() == [3, 10]
    row, mask = batch["input_ids"][0], batch["attention_mask"][0]
    real = slice(0, 3) if side == "right" else slice(13, 16)
    assert row[real].tolist() == [5, 6, 7] and mask[real].tolist() == [1, 1, 1]
    assert (row == tok.pad_token_id).sum() == 13 and mask.sum() == 3
    assert torch.equal(batch["targets"], torch.tensor([3.0, 5.0]))
    assert batch["index"].tolist() == [7, 2] and batch["index"].dtype == torch.long
    assert EssayCollator(tok, pad_to_multiple_of=None)(items)["input_ids"].shape == (2, 10)


def test_collator_soft_labels_and_no_targets(tiny):
    soft = [[0.0, 0.1, 0.6, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.2, 0.8, 0.0]]
    batch = EssayCollator(tiny)([{"input_ids": [1, 2], "target": soft[0]}, {"input_ids": [1], "target": soft[1]}])
    assert batch["targets"].shape == (2, 6) and batch["targets"].dtype == torch.float32
    assert set(EssayCollator(tiny)([{"input_ids": [1, 2]}])) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="all or none"):
        EssayCollator(tiny)([{"input_ids": [1], "target": 1.0}, {"input_ids": [2]}])


def test_token_cutout_masks_real_tokens_only_and_off_draws_nothing(tiny):
    rows = [tokenize_essays(tiny, ["word " * 300], 200)[0], tokenize_essays(tiny, ["short essay"], 200)[0]]
    items = [{"input_ids": row} for row in rows]
    torch.manual_seed(0)
    plain = EssayCollator(tiny)(items)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(EssayCollator(tiny, cutout=0.0)(items)["input_ids"], plain["input_ids"])
    assert torch.equal(torch.rand(1), after)  # cutout 0 leaves the RNG stream (dropout) as it was
    cut = EssayCollator(tiny, cutout=0.3)(items)
    changed = cut["input_ids"] != plain["input_ids"]
    assert bool((cut["input_ids"][changed] == tiny.mask_token_id).all())
    assert not bool(changed[plain["attention_mask"] == 0].any())  # padding untouched
    special = torch.isin(plain["input_ids"], torch.tensor(tiny.all_special_ids))
    assert not bool(changed[special].any())  # [CLS], [SEP] untouched
    share = changed.sum().item() / (plain["attention_mask"].bool() & ~special).sum().item()
    assert 0.2 < share < 0.4
    with pytest.raises(ValueError, match="cutout must be in"):
        EssayCollator(tiny, cutout=1.0)


def test_token_settings_take_the_models_defaults_for_what_a_saved_config_leaves_out():
    """A fold's train_config.json leaves settings at their default out (or predates them): ModelParams' defaults
    fill them, the same values a ModelParams gives, so training and inference cut the same tokens."""
    from dataclasses import asdict

    from common.config.model_params import ModelParams

    spec = ModelParams(max_length=256, windows=2, window_overlap=32, truncation_side="head_tail")
    assert TokenSettings.of(spec) == TokenSettings.of(asdict(spec))
    assert (TokenSettings.of(spec).windows, TokenSettings.of(spec).window_overlap) == (2, 32)
    saved = {k: v for k, v in asdict(spec).items() if k not in ("windows", "window_overlap")}
    old = TokenSettings.of(saved)
    assert (old.windows, old.window_overlap) == (ModelParams().windows, ModelParams().window_overlap) == (1, 64)
    assert (old.max_length, old.truncation_side) == (256, "head_tail")
