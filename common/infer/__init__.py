"""Infer (05): fold models and the ensemble artifact on the test essays; no training code, no optuna (Kaggle runs it)."""
