"""aes-pipeline's library: every stage script imports its logic from here (and never the reverse).

Packages by concern, lowest layer first; a module imports its own package and lower ones only, and no circle
(tests/test_layout.py checks both):
    core          errors, io, logs, offline, devices, tracking, artifact_checks: what every layer uses
    models.parts  the registries of poolings, heads and losses (config checks names against them)
    config        config (the typed params), layout (paths under paths.output), stage (run_stage, exit_with)
    prepare       00_prepare: data, duplicates, clusters, folds, text_features, prepare (the stage's logic)
    scoring       metrics, thresholds, nested (+ combiner, the interface it fits), uncertainty, oof, reports
    models        the EssayScorer, tokenization, text_model (the TF-IDF members, no backbone)
    train         02_train: engine, optim, training (the loop), fold_run (a fold's run set up), rows, fingerprints,
                  diagnostics, lr_find, mlm, mlm_backbone (the adapted backbone's cache), pseudo (what a student
                  reads), train_stage (the stage's logic) with trained_folds (the registry), locks, fold_workers,
                  model_oof (the OOF file)
    ensemble      04_ensemble: ensemble (blends, stacker), features (stacker inputs), selection (the stage's
                  nested search), ensemble_artifact (what 05 loads)
    infer         05_infer: inference (fold models and the artifact on the test essays; no training code, no optuna)
    pseudo        01_pseudo_label: pseudo_stage (teachers' soft labels; it predicts with infer, so it sits above)
    tools         what surrounds the stages: demo data (demo, demo_prompts, demo_essays), tiny backbone, run
                  report (run_report, its sections in report_results, report_training, report_submission,
                  report_runtime, built with report_html and report_runs), Kaggle packager
"""

__version__ = "0.1.0"
