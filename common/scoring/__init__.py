"""Scoring: QWK, thresholds, nested evaluation and its Combiner interface, intervals, OOF reports; no model code."""
