"""Model parts: poolings, heads, and the EssayScorer that joins them to a backbone."""

from common.models.heads import HEADS, build_head, kl_divergence
from common.models.pooling import POOLINGS, build_pooling
from common.models.scorer import EssayScorer, ScorerConfig

__all__ = ["HEADS", "POOLINGS", "EssayScorer", "ScorerConfig", "build_head", "build_pooling", "kl_divergence"]
