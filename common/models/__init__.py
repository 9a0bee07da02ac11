"""Model parts: poolings, heads, losses (one registry each), and the EssayScorer that joins them to a backbone."""

from common.models.heads import HEADS, Head
from common.models.losses import LOSSES, Loss, kl_divergence
from common.models.pooling import POOLINGS, Pooling, build_pooling
from common.models.scorer import EssayScorer, ScorerConfig

__all__ = [
    "HEADS",
    "LOSSES",
    "POOLINGS",
    "EssayScorer",
    "Head",
    "Loss",
    "Pooling",
    "ScorerConfig",
    "build_pooling",
    "kl_divergence",
]
