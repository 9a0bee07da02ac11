"""Stage mlm (part of 01_pseudo_label): masked-language-model domain adaptation of the backbone.

Run from the repository root: python 01_pseudo_label/mlm.py [dotted.key=value ...]
Continues the MLM pretraining of `backbone` on the train, test and external essays (no labels used) and
writes output/mlm/backbone/ (encoder + tokenizer) and output/mlm/metrics.json (held-out MLM loss before
and after). A model uses it with `backbone: mlm` in train.models.
"""

import logging

import pandas as pd
import torch

from common.config import Params
from common.data import load_competition_data
from common.io import write_json
from common.mlm import adapt_backbone
from common.stage import exit_with

log = logging.getLogger("aes.mlm")


def main(params: Params) -> None:
    out, p, prep = params.output_dir, params.pseudo, params.prepare
    if params.train.num_threads:
        torch.set_num_threads(params.train.num_threads)
    data = load_competition_data(params.input_dir, prep.train_file, prep.test_file, prep.sample_submission_file)
    external_path = out / "prepare" / "external.parquet"
    if not external_path.is_file():
        raise FileNotFoundError(f"{external_path} not found: run 00_prepare first (python 00_prepare/run.py)")
    external = pd.read_parquet(external_path)
    texts = [*data.train["full_text"], *data.test["full_text"], *external["full_text"]]
    log.info("MLM on %d essays (%d train, %d test, %d external)", len(texts), len(data.train), len(data.test),
             len(external))
    metrics = adapt_backbone(
        params.backbone, texts, out / "mlm" / "backbone", mlm_probability=p.mlm_probability,
        whole_word_masking=p.mlm_whole_word, max_length=p.mlm_max_length, epochs=p.mlm_epochs,
        batch_size=p.mlm_batch_size, lr=p.mlm_lr, held_out_share=p.mlm_held_out_share,
        add_newline_tokens=p.mlm_add_newline_tokens, seed=params.seed, device=params.train.device,
    )
    write_json(out / "mlm" / "metrics.json", metrics)
    log.info("held-out MLM loss %.4f -> %.4f; backbone in %s", metrics["held_out_loss_before"],
             metrics["held_out_loss_after"], out / "mlm" / "backbone")


if __name__ == "__main__":
    exit_with(main, __doc__)
