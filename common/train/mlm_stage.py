"""01_pseudo_label/mlm.py (optional, ahead of 02_train; it calls `adapt_backbones`): masked-language-model domain
adaptation of the backbone of every model with mlm.epochs > 0, cached in output/mlm/ where 02_train finds it."""

from __future__ import annotations

import logging

import torch

from common.config.params import Params
from common.core.errors import PipelineError
from common.prepare.data import load_competition_data
from common.train.mlm_backbone import adapted_backbone
from common.train.pseudo import read_external
from common.train.train_stage import check_backbones

log = logging.getLogger("aes.mlm")


def adapt_backbones(params: Params) -> None:
    """MLM on the train, test and external essays (no labels) for each chosen model; models sharing a backbone and
    MLM settings share one run (`adapted_backbone` keys its cache by their fingerprint)."""
    out, prep, t = params.output_dir, params.prepare, params.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    chosen = {n: s for n, s in t.all_models.items() if (not t.model or n == t.model) and s.mlm.epochs > 0}
    if not chosen:
        raise PipelineError(f"no model {'named ' + repr(t.model) + ' ' if t.model else ''}has mlm.epochs > 0: "
                            "set train.models.<name>.mlm.epochs (or train.students.<name>.mlm.epochs)")
    check_backbones([(name, spec.backbone or params.backbone) for name, spec in chosen.items()], params)
    data = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file)
    external = read_external(out / "prepare" / "external.parquet")
    texts = [*data.train["full_text"], *data.test["full_text"], *external["full_text"]]
    log.info("MLM on %d essays (%d train, %d test, %d external)", len(texts), len(data.train), len(data.test),
             len(external))
    for name, spec in chosen.items():
        folder = adapted_backbone(spec, spec.backbone or params.backbone, texts, out, params.seed, t.device)
        log.info("%s: adapted backbone in %s", name, folder)
