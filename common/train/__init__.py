"""Train (02): engine, optimisers, the fold loop (training, fold_run, rows), fingerprints, MLM (mlm, mlm_corpus,
mlm_loop, mlm_backbone), the pseudo-labels a student reads, and the stage (train_stage: its planner, with
trained_folds, locks, fold_workers and model_oof)."""
