"""Masked-language-model domain adaptation of a model's backbone, ahead of 02_train (optional).

Run from the repository root: python 01_pseudo_label/mlm.py [train.model=NAME] [dotted.key=value ...]
For each model with mlm.epochs > 0 (or only train.model), continues the MLM pretraining of its backbone
on the train, test and external essays (no labels used) into output/mlm/<fingerprint>/backbone/ (encoder,
tokenizer, mlm_metrics.json with the held-out MLM loss before and after). 02_train does the same step
itself and finds the result here; models with the same backbone and MLM settings share one run.
"""

import logging
import sys

try:
    from common.config.params import Params
    from common.config.stage import exit_with
    from common.core.errors import PipelineError
except ModuleNotFoundError as missing:  # a python without the project's libraries, e.g. dvc outside the venv
    print(f"error: {sys.executable} has no module {missing.name!r}; the project is installed in .venv. Fix: "
          "source .venv/bin/activate (make install creates it), then run the command again", file=sys.stderr)
    sys.exit(2)

log = logging.getLogger("aes.mlm")


def main(params: Params) -> None:
    import torch

    from common.prepare.data import load_competition_data
    from common.train.mlm_backbone import adapted_backbone
    from common.train.pseudo import read_external
    from common.train.train_stage import check_backbones

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


if __name__ == "__main__":
    exit_with(main, __doc__)
