"""A tiny DeBERTa-v2 backbone built offline from essay texts, for the demo and for tests.

`build_tiny_backbone` trains a Unigram tokenizer on the given texts (pieces learned by SentencePiece,
served by a `tokenizers` fast tokenizer, as deberta-v3's is) and saves it, with a small randomly
initialised DeBERTa-v2 model shaped like deberta-v3 (relative attention, p2c/c2p, no absolute position
input), as a folder that `AutoTokenizer`, `AutoModel` and `AutoModelForMaskedLM` load like any hub
checkpoint -- so the pipeline runs end to end without downloading weights. The tokenizer normalises
whitespace the way deberta-v3's does: every run of whitespace, newlines included, becomes one space.

Command line: `python -m common.tools.tiny_backbone --train-csv input/train.csv
--extra-csv input/persuade_2.0_human_scores_demo_id_github.csv --out input/tiny-deberta-v2`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import sentencepiece
import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import DebertaV2Config, DebertaV2Model, PreTrainedTokenizerFast

from common.core.io import staged_dir

logger = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
"""Special tokens in id order: [PAD] is id 0, as pad_token_id in the model config says."""


def _whitespace_normalizer() -> normalizers.Normalizer:
    """NFKC, then every run of whitespace (newlines, tabs, non-breaking spaces) to one space, then strip."""
    return normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )


def _train_unigram(texts: Sequence[str], n_pieces: int) -> list[tuple[str, float]]:
    """(piece, log-probability) of a Unigram vocabulary of at most n_pieces pieces, <unk> left out.

    Trained with SentencePiece, single-threaded: the `tokenizers` Unigram trainer walks hash maps in a
    random order, so its vocabulary differs between runs on the same texts, while SentencePiece gives the
    same pieces and scores every time. The texts are already normalised, so SentencePiece's own
    normalisation is off; like deberta-v3, words are split on spaces and start with "▁".
    """
    model = io.BytesIO()
    sentencepiece.set_random_generator_seed(0)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=n_pieces + 1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_by_whitespace=True,
        byte_fallback=False,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        max_sentence_length=1 << 16,
        num_threads=1,
        minloglevel=2,
    )
    processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
    return [
        (processor.id_to_piece(i), float(processor.get_score(i)))
        for i in range(processor.get_piece_size())
        if not (processor.is_unknown(i) or processor.is_control(i))
    ]


def _train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """A deberta-v3-like Unigram tokenizer trained on texts: SPECIAL_TOKENS first, then learned pieces."""
    normalizer = _whitespace_normalizer()
    normalized = [normalizer.normalize_str(text) for text in texts]
    pieces = _train_unigram([text for text in normalized if text], vocab_size - len(SPECIAL_TOKENS))
    vocab = [(token, 0.0) for token in SPECIAL_TOKENS] + pieces
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("[UNK]"), byte_fallback=False))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS]
    )
    cls_id, sep_id = SPECIAL_TOKENS.index("[CLS]"), SPECIAL_TOKENS.index("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return tokenizer


def build_tiny_backbone(
    texts: Sequence[str],
    out_dir: Path,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on texts and save it with a random tiny DeBERTa-v2 model into out_dir.

    vocab_size is an upper bound: the trainer may stop with fewer pieces on a small text collection, and
    the model's embedding matrix is sized to the tokenizer it got. The same texts and seed give an
    identical vocabulary and identical weights. The folder is written under a temporary name and renamed
    into place, replacing an existing out_dir. Returns out_dir.
    """
    if not texts:
        raise ValueError("build_tiny_backbone needs at least one text to train the tokenizer on")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}")
    tokenizer = _train_tokenizer(texts, vocab_size)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        bos_token="[CLS]",
        eos_token="[SEP]",
        model_max_length=max_position_embeddings,
    )
    config = DebertaV2Config(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        position_buckets=64,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
        pad_token_id=0,
        hidden_act="gelu",
        layer_norm_eps=1e-7,
    )
    torch.manual_seed(seed)
    model = DebertaV2Model(config)

    out_dir = Path(out_dir)
    with staged_dir(out_dir) as tmp_dir:
        hf_tokenizer.save_pretrained(tmp_dir)
        _portable_tokenizer_class(tmp_dir / "tokenizer_config.json")
        model.save_pretrained(tmp_dir, safe_serialization=True)
    return out_dir


def _portable_tokenizer_class(path: Path) -> None:
    """Name the generic fast-tokenizer class, which transformers 4.x (Kaggle images) and 5.x both load."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _essay_texts(csv_paths: Sequence[Path]) -> list[str]:
    texts: list[str] = []
    for path in csv_paths:
        frame = pd.read_csv(path, keep_default_na=False)
        if "full_text" not in frame.columns:
            raise ValueError(
                f"{path} has no full_text column (columns: {list(frame.columns)}); pass an essay CSV"
            )
        texts.extend(frame["full_text"].astype(str).tolist())
    return texts


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: train the tokenizer on the essays of the given CSVs and save the tiny backbone."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-csv", type=Path, required=True, help="CSV with a full_text column.")
    parser.add_argument(
        "--extra-csv",
        type=Path,
        action="append",
        default=[],
        help="More CSVs with a full_text column (repeatable).",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="Folder to save the tokenizer and model into."
    )
    parser.add_argument(
        "--vocab-size", type=int, default=2000, help="Upper bound on the tokenizer vocabulary."
    )
    parser.add_argument("--hidden-size", type=int, default=64, help="Model width.")
    parser.add_argument("--num-layers", type=int, default=2, help="Transformer layers.")
    parser.add_argument("--num-heads", type=int, default=2, help="Attention heads.")
    parser.add_argument("--intermediate-size", type=int, default=128, help="Feed-forward width.")
    parser.add_argument("--max-position-embeddings", type=int, default=512, help="Longest input in tokens.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the weight initialisation.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    texts = _essay_texts([args.train_csv, *args.extra_csv])
    out_dir = build_tiny_backbone(
        texts,
        args.out,
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
    )
    for path in sorted(out_dir.iterdir()):
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)


if __name__ == "__main__":
    main()
