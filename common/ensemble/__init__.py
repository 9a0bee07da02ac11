"""Ensemble (04): blends, stacker, stacker features, the nested search (selection), the artifact 05 loads."""
