"""Models, above scoring: the EssayScorer (a backbone, a pooling, a head), tokenization and batching, the TF-IDF text model; the
parts (poolings, heads, losses, one registry each) are models.parts, below config, which checks names against them.

The names below load on first use (PEP 562): checking a params file's pooling, head and loss names needs the
registries (torch) but not the scorer, whose transformers import would add seconds to every stage's start.
"""

from importlib import import_module

_WHERE = {
    "HEADS": "parts.heads",
    "Head": "parts.heads",
    "LOSSES": "parts.losses",
    "Loss": "parts.losses",
    "kl_divergence": "parts.losses",
    "POOLINGS": "parts.pooling",
    "Pooling": "parts.pooling",
    "build_pooling": "parts.pooling",
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
