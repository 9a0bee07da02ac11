"""Pseudo-labels (01), the top stage layer: it checks teachers with train's planner and predicts with infer."""
