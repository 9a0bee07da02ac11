"""The MLM-adapted backbone a model fine-tunes, made once and cached by its fingerprint.

`adapted_backbone` returns the base backbone, or (spec.mlm.epochs > 0) its copy adapted by masked-language
modelling on the essays (common.train.mlm), kept under <out>/mlm/<fingerprint>/backbone and found there by a
re-run or another model with the same base, MLM settings, essays and seed (`mlm_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from common.config.layout import mlm_checkpoint, mlm_dir, model_seeds
from common.config.model_params import ModelParams
from common.train.fingerprints import add_texts

log = logging.getLogger(__name__)


def mlm_seed(spec: ModelParams, seed: int) -> int:
    """The seed of a model's MLM run: its first seed when it lists `seeds` (the run's `seed` then changes nothing
    of the model), else the run's."""
    return model_seeds(spec, seed)[0]


def mlm_fingerprint(spec: ModelParams, base: str, texts: list[str], seed: int) -> str:
    """Hash of what an MLM-adapted backbone depends on: base backbone, MLM settings, newline token, essays."""
    digest = hashlib.sha256(json.dumps({"base": base, "mlm": asdict(spec.mlm), "seed": mlm_seed(spec, seed),
                                        "newline": spec.add_newline_tokens}, sort_keys=True).encode())
    add_texts(digest, texts)
    return digest.hexdigest()[:16]


def adapted_backbone(spec: ModelParams, base: str, texts: list[str], out: Path, seed: int, device: str) -> str:
    """The backbone `spec` fine-tunes: `base`, or its MLM-adapted copy when spec.mlm.epochs > 0.

    The adapted copy is made once per (base, MLM settings, essays, seed) and kept under
    <out>/mlm/<fingerprint>/backbone, so models that share those settings share one MLM run and a re-run
    finds it done. Under data parallelism every process takes part (the engine gives each a share of the
    batches) and the main process writes the folder; a killed run resumes from its last epoch's checkpoint.
    """
    if spec.mlm.epochs <= 0:
        return base
    from common.train.mlm import METRICS_FILE, adapt_backbone

    fingerprint = mlm_fingerprint(spec, base, texts, seed)
    folder = mlm_dir(out, fingerprint)
    if (folder / METRICS_FILE).is_file():
        log.info("%s: MLM-adapted backbone found in %s", spec.name, folder)
        return str(folder)
    m = spec.mlm
    log.info("%s: MLM domain adaptation of %s on %d essays -> %s", spec.name, base, len(texts), folder)
    checkpoint = mlm_checkpoint(out, fingerprint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    metrics = adapt_backbone(base, texts, folder, mlm_probability=m.probability, whole_word_masking=m.whole_word,
                             max_length=m.max_length, epochs=m.epochs, batch_size=m.batch_size, lr=m.lr,
                             held_out_share=m.held_out_share, add_newline_tokens=spec.add_newline_tokens,
                             seed=mlm_seed(spec, seed), device=device, mixed_precision=spec.mixed_precision,
                             checkpoint=checkpoint, fingerprint=fingerprint)
    log.info("%s: held-out MLM loss %.4f -> %.4f", spec.name, metrics["held_out_loss_before"],
             metrics["held_out_loss_after"])
    return str(folder)
