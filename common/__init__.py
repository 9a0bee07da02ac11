"""aes-pipeline's library: every stage script imports its logic from here (and never the reverse):
each script's main(params) calls one `<stage>_stage` function (docs/layout.md has the table).

Packages by concern, lowest layer first; a module imports its own package and lower ones only, and no circle
(tests/test_layout.py checks both):
    core          errors, io, logs, offline, devices, tracking, artifact_checks, lightgbm_files, plots (saving a
                  figure): what every layer uses
    models.parts  the registries of poolings, heads and losses (config checks names against them)
    config        the typed params (fields, params, model_params), loader (load_params, --help), params_file
                  (writes a run's params.yaml), layout (paths under paths.output), stage (run_stage, exit_with)
    prepare       00_prepare: data, duplicates, clusters, folds, text_features, prepare (the steps), plots,
                  prepare_stage (the stage)
    scoring       metrics, thresholds, nested (+ combiner, the interface it fits), uncertainty, oof, reports (plots);
                  03_oof_thresholds: thresholds_stage
    models        the EssayScorer, tokenization (and TokenSettings), batching (length-grouped batches), text_model (the
                  TF-IDF members, no backbone)
    train         02_train: engine, optim, training (the loop), fold_run (a fold's run set up), rows, fingerprints,
                  diagnostics, lr_find, mlm (MLM adaptation: adapt_backbone, its corpus in mlm_corpus, its loop in
                  mlm_loop), mlm_backbone (the adapted backbone's cache), mlm_stage (01_pseudo_label/mlm.py),
                  pseudo (what a student reads), train_stage (the stage's logic) with trained_folds (the
                  registry), locks, fold_workers, model_oof (the OOF file)
    ensemble      04_ensemble: combiners (the registry), blenders, stacker, surrogate (the QWK loss of both),
                  features (stacker inputs), ensemble_artifact (what 05 loads); 04 only: search (the nested search),
                  target (row weights), selection (the rules), tuning (the stacker's optuna search), ensemble_stage
    infer         05_infer: artifacts (fold models and the ensemble, checked whole), inference (their predictions on
                  the test essays), submission (paths, test essays in, submission out), runtime (the estimate),
                  infer_stage (the stage); no training code, no optuna
    pseudo        01_pseudo_label: pseudo_stage (teachers' soft labels; it predicts with infer, so it sits above)
    tools         what surrounds the stages: demo data (demo, demo_prompts, demo_essays), tiny backbone, run
                  report (run_report, its sections in report_results, report_training, report_submission,
                  report_runtime, built with report_html and report_runs), Kaggle packager
"""

__version__ = "0.1.0"
