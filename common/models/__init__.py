"""Model parts: poolings, heads, losses (one registry each), and the EssayScorer that joins them to a backbone.

The names below load on first use (PEP 562): checking a params file's pooling, head and loss names needs the
registries (torch) but not the scorer, whose transformers import would add seconds to every stage's start.
"""

from importlib import import_module

_WHERE = {
    "HEADS": "heads",
    "Head": "heads",
    "LOSSES": "losses",
    "Loss": "losses",
    "kl_divergence": "losses",
    "POOLINGS": "pooling",
    "Pooling": "pooling",
    "build_pooling": "pooling",
    "EssayScorer": "scorer",
    "ScorerConfig": "scorer",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
