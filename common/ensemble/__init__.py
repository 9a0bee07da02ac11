"""Ensemble (04): the combiners and what 05 loads of them, then 04's own search.

What 05_infer (and the Kaggle bundle) loads: combiners (`COMBINERS`, every method by name), blenders (mean, greedy,
scipy), stacker (LightGBM), surrogate (the smooth QWK loss),
features (the stacker's input columns), ensemble_artifact (what 04 saves and 05 opens).
04 only (the bundle leaves them out): search (the nested search: build_ensemble, evaluate_method), target (which
rows are fitted and selected for, and their weights), selection (the rules that keep a method and a target
weight), tuning (the stacker's optuna search).
"""
