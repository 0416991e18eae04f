"""RankCut: candidates from NCut ranked by CLS-attention contrast, on synthetic features with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autolabel.discovery import create_method
from autolabel.discovery.rankcut import RankCut
from autolabel.masks import mask_iou
from tests.test_tokencut_maskcut import planted


def with_attention(feats, hot: np.ndarray, heads: int = 3):
    """Give ``feats`` a CLS attention that is high on ``hot`` patches and low elsewhere."""
    attn = np.where(hot.ravel(), 5.0, 1.0)
    attn = torch.tensor(np.tile(attn / attn.sum(), (heads, 1)), dtype=torch.float32)
    feats.cls_attn = attn
    return feats


def test_rankcut_ranks_the_attended_object_first() -> None:
    feats, (a, b) = planted((20, 24), [(2, 2, 8, 8), (12, 14, 18, 22)])
    regions = RankCut(feature="tokens").discover(with_attention(feats, b))
    assert mask_iou(regions[0].mask, b) == 1.0
    assert any(mask_iou(r.mask, a) == 1.0 for r in regions[1:])
    scores = [r.score for r in regions]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] and scores[0] <= 1
    assert regions[0].mask[regions[0].seed]


def test_rankcut_follows_the_attention_not_the_order_of_cuts() -> None:
    feats, (a, b) = planted((20, 24), [(2, 2, 8, 8), (12, 14, 18, 22)])
    first_a = RankCut(feature="tokens").discover(with_attention(feats, a))[0]
    assert mask_iou(first_a.mask, a) == 1.0


def test_rankcut_suppresses_duplicate_candidates() -> None:
    feats, (a,) = planted((16, 20), [(4, 5, 10, 13)])
    regions = RankCut(feature="tokens", nms_iou=0.9).discover(with_attention(feats, a))
    for i, r in enumerate(regions):
        for other in regions[i + 1:]:
            assert mask_iou(r.mask, other.mask) <= 0.9
    assert len(regions) <= RankCut().max_regions


def test_rankcut_needs_attention_and_survives_tiny_grids() -> None:
    feats, _ = planted((16, 20), [(4, 5, 10, 13)])
    with pytest.raises(ValueError, match="CLS attention"):
        RankCut(feature="tokens").discover(feats)
    tiny, _ = planted((1, 3), [])
    assert create_method("rankcut", feature="tokens").discover(with_attention(tiny, np.zeros((1, 3), bool))) == []
