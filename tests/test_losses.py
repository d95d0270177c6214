"""Losses against direct computations on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.losses import (
    DiceLoss,
    build_criterion,
    class_pixel_counts,
    class_presence,
    compute_class_weights,
)

WEIGHTS = [0.5, 1.0, 2.0]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, generator=generator)
    target = torch.randint(0, 3, (2, 6, 5), generator=generator)
    target[0, :2] = 255
    return logits, target


def _main(name: str, logits: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
    loss, _ = build_criterion(name, num_classes=3, **kwargs)({"out": logits}, target)
    return loss


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_ce_equals_torch_cross_entropy(batch, weights) -> None:
    logits, target = batch
    w = None if weights is None else torch.tensor(weights)
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=255)
    torch.testing.assert_close(_main("ce", logits, target, class_weights=weights), expected)


def test_ce_of_fully_ignored_batch_is_zero_not_nan(batch) -> None:
    logits, _ = batch
    logits.requires_grad_(True)
    loss = _main("ce", logits, torch.full((2, 6, 5), 255))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def _focal_by_hand(logits, target, gamma, weights=None) -> torch.Tensor:
    valid = target != 255
    probs = logits.softmax(1).permute(0, 2, 3, 1)[valid]  # pixels x C
    p_t = probs[torch.arange(len(probs)), target[valid]]
    alpha = torch.ones_like(p_t) if weights is None else torch.tensor(weights)[target[valid]]
    return (alpha * (1 - p_t) ** gamma * -torch.log(p_t)).sum() / alpha.sum()


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_formula(batch, gamma, weights) -> None:
    logits, target = batch
    loss = _main("focal", logits, target, focal_gamma=gamma, class_weights=weights)
    torch.testing.assert_close(loss, _focal_by_hand(logits, target, gamma, weights))


@pytest.mark.parametrize("weights", [None, WEIGHTS])
def test_focal_gamma_zero_is_ce_and_gamma_two_is_smaller(batch, weights) -> None:
    logits, target = batch
    ce = _main("ce", logits, target, class_weights=weights)
    focal0 = _main("focal", logits, target, focal_gamma=0.0, class_weights=weights)
    focal2 = _main("focal", logits, target, class_weights=weights)  # default gamma 2
    torch.testing.assert_close(focal0, ce)
    assert focal2 < 0.9 * ce


def test_focal_gradient_finite_for_confident_pixels() -> None:
    logits = torch.tensor([[[[60.0]], [[-60.0]]]], requires_grad=True)  # p_t == 1 in float32
    loss = _main("focal", logits, torch.zeros(1, 1, 1, dtype=torch.long), focal_gamma=0.5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def _dice_by_hand(logits, target) -> float:
    probs, losses = logits.softmax(1), []
    valid = target != 255
    for c in range(logits.shape[1]):
        p, g = probs[:, c][valid], (target[valid] == c).float()
        if g.sum() > 0:
            losses.append(1 - 2 * (p * g).sum() / (p.sum() + g.sum()))
    return float(sum(losses) / len(losses))


def test_dice_matches_formula_and_skips_absent_class(batch) -> None:
    logits, target = batch
    target[target == 2] = 0  # class 2 absent from the target
    logits.requires_grad_(True)
    loss = DiceLoss()(logits, target)
    loss.backward()
    assert loss.item() == pytest.approx(_dice_by_hand(logits.detach(), target))
    assert torch.isfinite(logits.grad).all()


def test_dice_edge_cases() -> None:
    target = torch.tensor([[[0, 1], [1, 255]]])
    perfect = F.one_hot(target.clamp(max=1), 3).permute(0, 3, 1, 2).float() * 50
    assert DiceLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    empty = DiceLoss()(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255))
    assert empty.item() == 0.0


def test_ce_plus_dice(batch) -> None:
    logits, target = batch
    expected = F.cross_entropy(logits, target, ignore_index=255) + 0.5 * DiceLoss()(logits, target)
    torch.testing.assert_close(_main("ce+dice", logits, target, dice_weight=0.5), expected)


def test_class_presence_with_ignore() -> None:
    target = torch.tensor([[[0, 0], [2, 255]], [[255, 255], [255, 255]], [[1, 1], [1, 1]]])
    expected = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(class_presence(target, 3), expected)
    assert torch.equal(
        class_presence(torch.tensor([[[0, -1]]]), 2, ignore_index=-1), expected[2:, 1:]
    )


def test_aux_and_se_terms_weighted_exactly(batch) -> None:
    logits, target = batch
    aux = torch.randn_like(logits)
    se = torch.randn(2, 3)
    criterion = build_criterion("ce", num_classes=3, aux_weight=0.3, se_weight=0.7)
    total, parts = criterion({"out": logits, "aux": aux, "se": se}, target)
    main = F.cross_entropy(logits, target, ignore_index=255)
    aux_loss = F.cross_entropy(aux, target, ignore_index=255)
    se_loss = F.binary_cross_entropy_with_logits(se, class_presence(target, 3))
    torch.testing.assert_close(total, main + 0.3 * aux_loss + 0.7 * se_loss)
    assert parts == pytest.approx(
        {"main": main.item(), "aux": aux_loss.item(), "se": se_loss.item()}
    )
    assert all(isinstance(v, float) for v in parts.values())
    _, main_only = criterion({"out": logits}, target)
    assert set(main_only) == {"main"}


def test_total_backpropagates_to_every_output(batch) -> None:
    logits, target = batch
    outputs = {
        k: torch.randn(*s, requires_grad=True)
        for k, s in [("out", logits.shape), ("aux", logits.shape), ("se", (2, 3))]
    }
    total, _ = build_criterion("focal", num_classes=3)(outputs, target)
    total.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in outputs.values())


def test_builder_errors(batch) -> None:
    with pytest.raises(ValueError, match=r"'lovasz'.*ce, focal, dice, ce\+dice"):
        build_criterion("lovasz", num_classes=3)
    with pytest.raises(ValueError, match="2 values but num_classes is 3"):
        build_criterion("ce", num_classes=3, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="gamma"):
        build_criterion("focal", num_classes=3, focal_gamma=-1.0)
    logits, target = batch
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        build_criterion(num_classes=3)({"out": logits, "se": torch.zeros(2, 4)}, target)


def test_class_weights_follow_enet_formula() -> None:
    masks = [np.array([[0, 0, 0], [0, 1, 255]], dtype=np.uint8), torch.tensor([[0, 0, 1]])]
    counts = class_pixel_counts(masks, 3)
    assert counts.tolist() == [6, 2, 0]
    weights = compute_class_weights(masks, 3)
    expected = [1 / math.log(1.02 + 0.75), 1 / math.log(1.02 + 0.25), 1 / math.log(1.02)]
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert weights.dtype == torch.float32
    assert weights[0] < weights[1] < weights[2]  # rarer classes weigh more


def test_class_weight_errors() -> None:
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        class_pixel_counts([torch.tensor([0, 3, 7, 255])], 3)
    with pytest.raises(ValueError, match="no labelled pixel"):
        compute_class_weights([torch.full((2, 2), 255)], 3)
    with pytest.raises(ValueError, match="c must be > 1"):
        compute_class_weights([torch.zeros(2, 2)], 3, c=1.0)


def _smoothed_ce_by_hand(logits, target, smoothing, weights=None) -> torch.Tensor:
    valid = target != 255
    log_probs = logits.log_softmax(1).permute(0, 2, 3, 1)[valid]  # pixels x C
    labels = target[valid]
    num_classes = logits.shape[1]
    soft = torch.full_like(log_probs, smoothing / num_classes)
    soft[torch.arange(len(labels)), labels] += 1 - smoothing
    w = torch.ones(len(labels)) if weights is None else torch.tensor(weights)[labels]
    return (w * -(soft * log_probs).sum(1)).sum() / w.sum()


@pytest.mark.parametrize("weights", [None, WEIGHTS])
@pytest.mark.parametrize("name", ["ce", "ce+dice"])
def test_label_smoothing_matches_soft_targets(batch, name, weights) -> None:
    logits, target = batch
    dice = DiceLoss()(logits, target) if name == "ce+dice" else 0.0
    for smoothing in (0.0, 0.1, 1.0):
        loss = _main(name, logits, target, class_weights=weights, label_smoothing=smoothing)
        expected = _smoothed_ce_by_hand(logits, target, smoothing, weights) + dice
        torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(
        _main("ce", logits, target, label_smoothing=0.1),
        F.cross_entropy(logits, target, ignore_index=255, label_smoothing=0.1),
    )


def test_label_smoothing_errors() -> None:
    for name in ("focal", "dice"):
        with pytest.raises(ValueError, match=f"the {name} loss has no cross-entropy for lab"):
            build_criterion(name, num_classes=3, label_smoothing=0.1)
        with pytest.raises(ValueError, match=r"for ohem_thresh=0.0: choose the ce or ce\+dice"):
            build_criterion(name, num_classes=3, ohem_thresh=0.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        build_criterion("ce", num_classes=3, label_smoothing=1.5)


def _nll(logits, target) -> torch.Tensor:
    return F.cross_entropy(logits, target, ignore_index=255, reduction="none")


def test_ohem_keeps_the_pixels_below_the_threshold(batch) -> None:
    logits, target = batch
    valid = target != 255
    p_true = (-_nll(logits, target)).exp()
    hard = valid & (p_true < 0.4)
    assert 0 < hard.sum() < valid.sum()  # the threshold splits this batch
    w = torch.tensor(WEIGHTS)[target.clamp(max=2)] * hard
    expected = (w * _nll(logits, target)).sum() / w.sum()
    loss = _main("ce", logits, target, class_weights=WEIGHTS, ohem_thresh=0.4, ohem_min_kept=0)
    torch.testing.assert_close(loss, expected)
    # every pixel is below a threshold of 1, and min_kept beyond the batch keeps them all
    plain = _main("ce", logits, target)
    for thresh, kept in [(1.0, 0), (0.0, 10**6)]:
        mined = _main("ce", logits, target, ohem_thresh=thresh, ohem_min_kept=kept)
        torch.testing.assert_close(mined, plain)


@pytest.mark.parametrize("kept", [1, 5, 17])
def test_ohem_always_keeps_the_hardest_pixels(batch, kept) -> None:
    logits, target = batch
    logits.requires_grad_(True)
    loss = _main("ce", logits, target, ohem_thresh=0.0, ohem_min_kept=kept)
    hardest = _nll(logits, target)[target != 255].sort(descending=True).values[:kept]
    torch.testing.assert_close(loss, hardest.mean())
    loss.backward()  # only the kept pixels move
    moved = logits.grad.abs().sum(1) > 0
    assert int(moved.sum()) == kept and not moved[target == 255].any()


def test_ohem_in_ce_plus_dice_and_on_an_ignored_batch(batch) -> None:
    logits, target = batch
    ce = _main("ce", logits, target, ohem_thresh=0.5)  # min_kept beyond the batch: all pixels
    torch.testing.assert_close(ce, _main("ce", logits, target))
    mined = _main("ce+dice", logits, target, ohem_thresh=0.4, ohem_min_kept=3)
    expected = _main("ce", logits, target, ohem_thresh=0.4, ohem_min_kept=3)
    torch.testing.assert_close(mined, expected + DiceLoss()(logits, target))  # dice sees all
    assert _main("ce", logits, torch.full((2, 6, 5), 255), ohem_thresh=0.7).item() == 0.0
