"""TokenCut and MaskCut on synthetic patch features with planted objects: what they find and what they drop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autolabel.discovery.maskcut import MaskCut
from autolabel.discovery.tokencut import TokenCut
from autolabel.features import PatchFeatures
from autolabel.geometry import PatchGeometry
from autolabel.masks import mask_iou

PATCH = 8
DIM = 24


def planted(grid: tuple[int, int], blocks: list[tuple[int, int, int, int]], noise: float = 0.25,
            seed: int = 0) -> tuple[PatchFeatures, list[np.ndarray]]:
    """Features on a ``grid``: background along one axis, each block (r0, c0, r1, c1 exclusive) along another."""
    gh, gw = grid
    g = torch.Generator().manual_seed(seed)
    labels = np.zeros(grid, dtype=np.int64)
    truths = []
    for i, (r0, c0, r1, c1) in enumerate(blocks, start=1):
        labels[r0:r1, c0:c1] = i
        truth = np.zeros(grid, bool)
        truth[r0:r1, c0:c1] = True
        truths.append(truth)
    centres = 3.0 * torch.eye(DIM)[: len(blocks) + 1]
    tokens = centres[torch.from_numpy(labels.ravel())] + noise * torch.randn(gh * gw, DIM, generator=g)
    geo = PatchGeometry.for_image(gh * PATCH, gw * PATCH, PATCH, None)
    feats = PatchFeatures(geometry=geo, tokens=tokens, k=tokens.reshape(gh * gw, 3, DIM // 3), layer=0,
                          backbone="synthetic", extra={"feature": "tokens"})
    return feats, truths


def twin_blobs() -> tuple[PatchFeatures, list[np.ndarray]]:
    """Two separate blobs with the same "object" features on one background."""
    feats, (a, b) = planted((20, 24), [(2, 2, 8, 8), (12, 14, 18, 22)], seed=1)
    tokens = feats.tokens.clone()
    tokens[b.ravel()] = tokens[a.ravel()].mean(0) + 0.25 * torch.randn(int(b.sum()), DIM,
                                                                      generator=torch.Generator().manual_seed(5))
    feats.tokens = tokens
    return feats, [a, b]


# ------------------------------------------------------------------------------------------------- TokenCut
@pytest.mark.parametrize("solver", ["fast", "dense"])
def test_tokencut_finds_the_planted_object(solver: str) -> None:
    feats, (truth,) = planted((16, 20), [(4, 5, 10, 13)])
    (region,) = TokenCut(solver=solver).discover(feats)
    np.testing.assert_array_equal(region.mask, truth)
    assert region.mask[region.seed]
    assert 0.5 < region.score <= 1.0
    assert region.soft.shape == (16, 20) and region.soft.min() >= 0 and region.soft.max() <= 1
    np.testing.assert_array_equal(region.soft > 0.5, truth)  # soft map is centred on the cut
    assert region.soft[truth].mean() > region.soft[~truth].mean() + 0.3


def test_tokencut_keeps_only_the_seed_component() -> None:
    feats, (a, b) = twin_blobs()
    (region,) = TokenCut().discover(feats)
    assert (mask_iou(region.mask, a) == 1.0) != (mask_iou(region.mask, b) == 1.0)


def test_tokencut_feature_choice() -> None:
    feats, (truth,) = planted((16, 16), [(4, 4, 10, 10)])
    feats.extra["feature"] = "k"
    (region,) = TokenCut(feature="auto").discover(feats)  # 'auto' → the backbone's best (here k)
    np.testing.assert_array_equal(region.mask, truth)
    with pytest.raises(ValueError, match="not extracted"):
        TokenCut(feature="q").discover(feats)


def test_tokencut_degenerate_inputs() -> None:
    feats, _ = planted((1, 1), [])
    (region,) = TokenCut().discover(feats)
    assert region.mask.shape == (1, 1) and region.score == 0.0
    flat, _ = planted((10, 12), [], noise=0.0)  # every patch identical
    regions = TokenCut().discover(flat)
    assert len(regions) == 1 and regions[0].mask.shape == (10, 12)
    assert 0.0 <= regions[0].score <= 1.0


# -------------------------------------------------------------------------------------------------- MaskCut
def test_maskcut_finds_two_planted_blocks_as_two_regions() -> None:
    feats, truths = planted((24, 24), [(3, 3, 10, 11), (14, 13, 21, 21)])
    regions = MaskCut(n_objects=3).discover(feats)
    assert len(regions) == 2
    for truth in truths:
        assert max(mask_iou(r.mask, truth) for r in regions) == 1.0
    assert regions[0].score > regions[1].score
    assert not (regions[0].mask & regions[1].mask).any()
    for r in regions:
        assert r.mask[r.seed] and 0 <= r.score <= 1


def test_maskcut_stops_at_n_objects() -> None:
    feats, truths = planted((24, 24), [(2, 2, 8, 8), (2, 14, 8, 20), (14, 8, 20, 14)])
    assert len(MaskCut(n_objects=3).discover(feats)) == 3
    regions = MaskCut(n_objects=2).discover(feats)
    assert len(regions) == 2
    assert all(max(mask_iou(r.mask, t) for t in truths) == 1.0 for r in regions)


def test_maskcut_drops_regions_of_one_percent_or_less() -> None:
    # a 2x2 block is 4 of 576 patches (0.7 %): dropped by the default 1 % rule, kept when the rule is off
    feats, (big, tiny) = planted((24, 24), [(3, 3, 11, 11), (18, 18, 20, 20)])
    default = MaskCut(n_objects=3).discover(feats)
    assert any(mask_iou(r.mask, big) == 1.0 for r in default)
    assert not any((r.mask & tiny).any() for r in default)
    permissive = MaskCut(n_objects=3, min_area_frac=0.0).discover(feats)
    assert any(mask_iou(r.mask, tiny) == 1.0 for r in permissive)


def test_maskcut_background_touching_corners_is_never_the_object() -> None:
    feats, (truth,) = planted((20, 20), [(0, 0, 14, 14)])  # a big object in one corner: 3 corners are background
    regions = MaskCut(n_objects=1).discover(feats)
    assert len(regions) == 1
    np.testing.assert_array_equal(regions[0].mask, truth)


def test_maskcut_degenerate_inputs() -> None:
    tiny, _ = planted((1, 3), [])
    assert MaskCut().discover(tiny) == []
    flat, _ = planted((10, 12), [], noise=0.0)
    regions = MaskCut().discover(flat)
    assert all(r.mask.shape == (10, 12) for r in regions)


def test_tokencut_partition_keeps_every_foreground_part() -> None:
    feats, (a, b) = twin_blobs()
    (region,) = TokenCut(keep="partition").discover(feats)
    np.testing.assert_array_equal(region.mask, a | b)
    with pytest.raises(ValueError, match="keep"):
        TokenCut(keep="largest")
