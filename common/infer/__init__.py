"""Infer (05): fold models and the ensemble artifact (artifacts) on the test essays (inference), the submission
(submission) and the runtime estimate (runtime); no training code, no optuna (Kaggle runs it)."""
