"""Model parts: poolings, heads, and the EssayScorer that joins them to a transformer backbone."""

from common.models.heads import HEADS, Head, build_head, kl_divergence
from common.models.pooling import POOLINGS, Pooling, build_pooling
from common.models.scorer import EssayScorer, ScorerConfig

__all__ = [
    "HEADS",
    "POOLINGS",
    "EssayScorer",
    "Head",
    "Pooling",
    "ScorerConfig",
    "build_head",
    "build_pooling",
    "kl_divergence",
]
