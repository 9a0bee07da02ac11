"""aes-pipeline's library: every stage script imports its logic from here (and never the reverse).

Where each stage's logic lives (its run.py parses params, calls it, writes outputs):
    00_prepare        common.prepare        origins, duplicate groups, prompt clusters, folds
    01_pseudo_label   common.pseudo_stage   each student's soft labels of the external essays (common.pseudo)
                      common.mlm            MLM domain adaptation of a backbone (01_pseudo_label/mlm.py)
    02_train          common.train_stage    every fold of one model (common.training on common.engine)
    03_oof_thresholds common.oof            per-model nested threshold report (common.thresholds, common.nested)
    04_ensemble       common.selection      blends and stacker scored nested (common.ensemble, common.nested),
                                            saved as one artifact (common.ensemble_artifact)
    05_infer          common.inference      fold models on the test essays, then the ensemble artifact
common.tools holds what surrounds the stages (demo data, tiny backbone, run report, Kaggle packager).
"""

__version__ = "0.1.0"
