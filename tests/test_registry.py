"""Tests of common/models/parts/registry.py: the mapping and its errors, and that a pooling, a head and a loss
added in a test (one class and its decorator each) are built by EssayScorer, accepted by the params loader
and trained with."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig

from common.config.loader import load_params
from common.models import HEADS, LOSSES, POOLINGS, EssayScorer, Head, Loss, Pooling
from common.models.parts.losses import expected_score
from common.models.parts.registry import Registry
from common.train.fold_run import scorer_config
from tests.conftest import BACKBONE, REPO


class Base:
    pass


def test_register_keeps_the_order_and_returns_the_class() -> None:
    kinds: Registry[Base] = Registry("widget")

    @kinds.register("b")
    class B(Base):
        pass

    @kinds.register("a")
    class A(Base):
        def __init__(self, size: int = 1):
            self.size = size

    assert list(kinds) == ["b", "a"] and len(kinds) == 2 and "a" in kinds and "c" not in kinds
    assert kinds["a"] is A and isinstance(B(), B)
    assert kinds.build("a", size=3).size == 3
    kinds.check("b")
    del kinds["b"]
    assert list(kinds) == ["a"]


def test_unknown_and_doubled_names_are_errors() -> None:
    kinds: Registry[Base] = Registry("widget")
    kinds.register("a")(type("A", (Base,), {}))
    with pytest.raises(ValueError, match="unknown widget 'z'; choose one of a"):
        kinds.check("z")
    with pytest.raises(ValueError, match="unknown widget 'z'"):
        kinds.build("z")
    with pytest.raises(ValueError, match="widget 'a' is registered twice: by A and by Other"):
        kinds.register("a")(type("Other", (Base,), {}))
    assert kinds["a"].__name__ == "A"  # the first one stays
    with pytest.raises(KeyError):
        kinds["z"]  # plain mapping lookup


# ---------------------------------------------------------------- a new part is one class and its decorator


@pytest.fixture
def toy_parts():
    """A pooling, a head and a loss registered the way a new one is added; taken out again afterwards."""

    @POOLINGS.register("toy_last_token")
    class LastTokenPooling(Pooling):
        """State of the last real token (right padding)."""

        def __init__(self, hidden_size: int):
            super().__init__(hidden_size)

        def forward(self, hidden_states, attention_mask):
            last = hidden_states[-1]
            return last[torch.arange(last.size(0)), attention_mask.sum(dim=1) - 1]

    @HEADS.register("toy_bounded")
    class BoundedHead(Head):
        """One logit squashed onto the 1-6 scale."""

        def __init__(self, in_dim: int, dropout: float = 0.1, n_dropout_samples: int = 1):
            super().__init__(dropout, n_dropout_samples)
            self.fc = torch.nn.Linear(in_dim, 1)

        def project(self, pooled):
            return self.fc(pooled)

        def predict(self, logits):
            return 1.0 + 5.0 * torch.sigmoid(logits.float().squeeze(-1))

    @LOSSES.register("toy_l1")
    class AbsoluteError(Loss):
        """Mean absolute error of the predicted score."""

        def compute(self, head, logits, target):
            return F.l1_loss(head.predict(logits), expected_score(target))

    try:
        yield
    finally:
        del POOLINGS["toy_last_token"], HEADS["toy_bounded"], LOSSES["toy_l1"]


def test_new_parts_are_accepted_at_load_built_and_trained(toy_parts) -> None:
    key = "train.models.tiny-regression.scorer"
    params = load_params(REPO / "params.yaml", [f"{key}.pooling=toy_last_token", f"{key}.head=toy_bounded",
                                                f"{key}.loss=toy_l1", f"{key}.dropout=0.0"])
    spec = params.train.models["tiny-regression"]
    config = scorer_config(spec, BACKBONE, AutoConfig.from_pretrained(BACKBONE).vocab_size)
    assert (config.pooling, config.head, config.loss) == ("toy_last_token", "toy_bounded", "toy_l1")
    torch.manual_seed(0)
    model = EssayScorer(config)
    assert type(model.pooling).__name__ == "LastTokenPooling" and type(model.head).__name__ == "BoundedHead"
    g = torch.Generator().manual_seed(0)
    ids, mask, y = torch.randint(5, 1000, (4, 12), generator=g), torch.ones(4, 12, dtype=torch.long), torch.arange(2.0, 6.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = model.loss(model(ids, mask), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    scores, probs = model.predict(ids, mask)
    assert probs is None and ((scores > 1) & (scores < 6)).all()


def test_a_new_head_trains_with_the_base_default_loss(toy_parts) -> None:
    params = load_params(REPO / "params.yaml", ["train.models.tiny-regression.scorer.head=toy_bounded"])
    config = scorer_config(params.train.models["tiny-regression"], BACKBONE, None)
    assert config.loss == "" and type(EssayScorer(config).training_loss).__name__ == "MeanSquaredError"


def test_a_wrong_name_lists_the_new_part_among_the_choices(toy_parts) -> None:
    assert "toy_last_token" in POOLINGS
    with pytest.raises(ValueError, match=r"'train\.models\.tiny-regression\.scorer\.pooling': unknown pooling "
                                         r"'toy_last_tokn'; choose one of cls, mean.*toy_last_token"):
        load_params(REPO / "params.yaml", ["train.models.tiny-regression.scorer.pooling=toy_last_tokn"])


def test_the_built_in_registries_hold_no_toys() -> None:
    assert not any(name.startswith("toy_") for registry in (POOLINGS, HEADS, LOSSES) for name in registry)
