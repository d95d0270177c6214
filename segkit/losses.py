"""Segmentation losses: cross-entropy, focal, dice, and their combination with the auxiliary and
SE (EncNet class-presence) terms of a model's output dict.

:func:`build_criterion` returns one :class:`SegmentationLoss` that reads ``"out"``, ``"aux"``
and ``"se"`` from the model's outputs, so the training loop needs no per-model code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = ("ce", "focal", "dice", "ce+dice")


def _pixel_weights(target: Tensor, weight: Tensor | None, ignore_index: int) -> Tensor:
    """Per-pixel weights ``N x H x W``: the target class's weight, 0 at ignored pixels."""
    valid = target != ignore_index
    if weight is None:
        return valid.float()
    return weight[torch.where(valid, target, 0)] * valid


def _weighted_mean(values: Tensor, target: Tensor, weight: Tensor | None, ignore: int) -> Tensor:
    """Mean of per-pixel ``values`` weighted like ``F.cross_entropy(reduction="mean")``.

    Unlike ``F.cross_entropy`` it returns 0 rather than NaN when every pixel is ignored (a
    random crop can land entirely on ignore pixels).
    """
    w = _pixel_weights(target, weight, ignore)
    return (values * w).sum() / w.sum().clamp_min(torch.finfo(w.dtype).tiny)


class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy, equal to ``F.cross_entropy(logits, target, weight,
    ignore_index=...)`` but 0 instead of NaN for a batch without labelled pixels.

    With label smoothing ``e`` each labelled pixel's target is ``1 - e`` on its class plus
    ``e / C`` on every class (Szegedy et al. 2016): without class weights what
    ``F.cross_entropy(..., label_smoothing=e)`` computes; with them the weight of the pixel's
    class scales its whole term (as in the weighted mean above), where ``F.cross_entropy``
    would weight each class's share of the spread by that class's weight.

    With online hard example mining (OHEM; Shrivastava et al. 2016, as mmsegmentation's
    ``OHEMPixelSampler`` and PyTorch-Encoding's ``OhemCrossEntropy2d`` use it for segmentation)
    only the hard pixels count: those whose predicted probability of their class is below
    ``ohem_thresh``, and at least the ``ohem_min_kept`` hardest labelled pixels of the batch
    whatever their probability. The others are ignored for this batch.

    Args:
        weight: optional per-class weights, shape ``C``.
        ignore_index: target value of pixels that do not contribute.
        label_smoothing: ``e`` in ``[0, 1]``; 0 is plain cross-entropy.
        ohem_thresh: probability in ``[0, 1]`` below which a pixel is hard; None: no mining.
        ohem_min_kept: with mining, the number of hardest pixels always kept.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        ohem_thresh: float | None = None,
        ohem_min_kept: int = 100_000,
    ) -> None:
        super().__init__()
        if not 0 <= label_smoothing <= 1:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        if ohem_thresh is not None and not 0 <= ohem_thresh <= 1:
            raise ValueError(f"ohem_thresh must be a probability in [0, 1], got {ohem_thresh}")
        if ohem_min_kept < 0:
            raise ValueError(f"ohem_min_kept must be >= 0, got {ohem_min_kept}")
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = ohem_min_kept
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` ``N x C x H x W``, ``target`` ``N x H x W`` -> scalar loss."""
        if self.ohem_thresh is not None:
            target = self._hard_pixels_only(logits, target)
        nll = F.cross_entropy(
            logits,
            target,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        return _weighted_mean(nll, target, self.weight, self.ignore_index)

    @torch.no_grad()
    def _hard_pixels_only(self, logits: Tensor, target: Tensor) -> Tensor:
        """``target`` with the easy labelled pixels set to ``ignore_index``."""
        valid = target != self.ignore_index
        labels = torch.where(valid, target, 0).unsqueeze(1)
        p_true = logits.float().softmax(1).gather(1, labels).squeeze(1)
        keep = valid & (p_true < self.ohem_thresh)
        kept_anyway = min(self.ohem_min_kept, int(valid.sum()))
        if kept_anyway:
            # the hardest labelled pixels: ignored ones rank last with probability 2
            hardest = torch.where(valid, p_true, 2.0).flatten().topk(kept_anyway, largest=False)
            keep.view(-1)[hardest.indices] = True
        return torch.where(keep, target, self.ignore_index)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): per pixel ``alpha_t * (1 - p_t) ** gamma * CE``.

    ``alpha_t`` is the target class's weight when class weights are given. The mean is taken
    with the same normalisation as weighted cross-entropy (divided by the sum of ``alpha_t``
    over labelled pixels; without weights, by their count), so ``gamma=0`` is exactly
    :class:`CrossEntropyLoss` with or without weights, and ``gamma>0`` down-weights pixels that
    are already well classified.

    Args:
        gamma: focusing parameter, ``>= 0``.
        weight: optional per-class weights (alpha), shape ``C``.
        ignore_index: target value of pixels that do not contribute.
    """

    def __init__(
        self, gamma: float = 2.0, weight: Tensor | None = None, ignore_index: int = 255
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` ``N x C x H x W``, ``target`` ``N x H x W`` -> scalar loss."""
        nll = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        # 1 - p_t = 1 - exp(-nll), computed with expm1 to stay accurate when p_t is near 1. The
        # clamp keeps the gradient of x ** gamma finite at x = 0 for 0 < gamma < 1.
        one_minus_pt = (-torch.expm1(-nll)).clamp_min(1e-12)
        return _weighted_mean(
            one_minus_pt**self.gamma * nll, target, self.weight, self.ignore_index
        )


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward is again a sum over processes."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.detach().clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sum_over_processes(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over the processes of a torchrun job, differentiably (else ``tensor``).

    For a loss ``L`` of statistics summed over the global batch (dice's intersection and
    cardinality), every process computes ``L`` of the global sums; the backward sums each
    process's ``dL/dsum`` (the same on all of them) over the processes, and
    DistributedDataParallel's mean of the parameter gradients then equals the gradient of one
    process holding the whole global batch. Every process must call it the same number of
    times, in the same order, as with any collective operation.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    return _SumOverProcesses.apply(tensor)


class DiceLoss(nn.Module):
    """Soft multi-class dice loss over softmax probabilities: ``1 - mean_c dice_c`` with
    ``dice_c = 2 * sum(p_c * g_c) / (sum(p_c) + sum(g_c))`` summed over the batch's labelled
    pixels (under torchrun, over the global batch of all processes).

    Ignored pixels are masked out of both probabilities and one-hot targets. The mean runs over
    classes present in the batch's targets: a class absent from the targets has no dice to
    reward (its false positives are still penalised through the softmax, which takes that
    probability away from the true class). A batch with no labelled pixel gives 0, never NaN.

    Args:
        ignore_index: target value of pixels that do not contribute.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` ``N x C x H x W``, ``target`` ``N x H x W`` -> scalar loss."""
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)  # N x 1 x H x W
        probs = logits.float().softmax(dim=1) * valid
        onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0), num_classes)
        onehot = onehot.permute(0, 3, 1, 2).to(probs.dtype) * valid  # N x C x H x W
        dims = (0, 2, 3)
        # Under torchrun the sums run over the global batch (one all-reduce), so N processes
        # with batch B train exactly like one process with batch N * B.
        sums = sum_over_processes(
            torch.stack([(probs * onehot).sum(dims), probs.sum(dims), onehot.sum(dims)])
        )
        intersection, prob_sum, target_sum = sums.unbind(0)
        dice = 2 * intersection / (prob_sum + target_sum).clamp_min(1e-7)
        present = (target_sum > 0).to(dice.dtype)
        return ((1 - dice) * present).sum() / present.sum().clamp_min(1)


class CEDiceLoss(nn.Module):
    """``CE + dice_weight * dice``; see :class:`CrossEntropyLoss` and :class:`DiceLoss` (the
    dice term sees every labelled pixel, mined or not)."""

    def __init__(self, ce: CrossEntropyLoss, dice_weight: float = 1.0) -> None:
        super().__init__()
        self.ce = ce
        self.dice = DiceLoss(ce.ignore_index)
        self.dice_weight = dice_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits`` ``N x C x H x W``, ``target`` ``N x H x W`` -> scalar loss."""
        return self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


def class_presence(target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Which classes occur in each mask: the target of EncNet's SE loss.

    Args:
        target: class indices ``N x H x W``; ``ignore_index`` pixels are not counted.
        num_classes: number of classes ``C``.
        ignore_index: target value of pixels to skip.

    Returns:
        Float tensor ``N x C``, 1 where class ``c`` occurs in image ``n``, else 0.
    """
    n = target.shape[0]
    # Ignored pixels are sent to an extra column C, which is dropped afterwards.
    index = torch.where(target == ignore_index, num_classes, target).reshape(n, -1).long()
    presence = torch.zeros(n, num_classes + 1, device=target.device)
    presence.scatter_(1, index, 1.0)
    return presence[:, :num_classes]


class SegmentationLoss(nn.Module):
    """The training criterion: the main loss on ``outputs["out"]``, plus the same loss on
    ``outputs["aux"]`` and EncNet's SE loss on ``outputs["se"]`` when the model returns them.

    ``total = main + aux_weight * aux + se_weight * se``. The SE term is
    ``binary_cross_entropy_with_logits(outputs["se"], class_presence(target))``.

    Args:
        loss: per-logit loss ``(N x C x H x W logits, N x H x W target) -> scalar``.
        num_classes: number of classes ``C``.
        ignore_index: target value of pixels that do not contribute.
        aux_weight: weight of the auxiliary-head term.
        se_weight: weight of the SE term.
    """

    def __init__(
        self,
        loss: nn.Module,
        *,
        num_classes: int,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        se_weight: float = 0.2,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.se_weight = se_weight

    def forward(
        self, outputs: dict[str, Tensor], target: Tensor
    ) -> tuple[Tensor, dict[str, float]]:
        """Compute the total loss.

        Args:
            outputs: the model's dict: ``"out"`` (``N x C x H x W``), optionally ``"aux"``
                (same shape) and ``"se"`` (``N x C``).
            target: class indices ``N x H x W``.

        Returns:
            The total loss (scalar tensor, for ``backward``) and its unweighted parts as
            floats for logging: ``{"main": ..., "aux"?: ..., "se"?: ...}``.
        """
        if "out" not in outputs:
            raise KeyError(f"model outputs need an 'out' entry, got keys {sorted(outputs)}")
        main = self.loss(outputs["out"], target)
        total, parts = main, {"main": main}
        if "aux" in outputs:
            parts["aux"] = self.loss(outputs["aux"], target)
            total = total + self.aux_weight * parts["aux"]
        if "se" in outputs:
            se_logits = outputs["se"]
            if se_logits.shape != (target.shape[0], self.num_classes):
                raise ValueError(
                    f"outputs['se'] has shape {tuple(se_logits.shape)}, expected "
                    f"{(target.shape[0], self.num_classes)} (N x num_classes)"
                )
            presence = class_presence(target, self.num_classes, self.ignore_index)
            parts["se"] = F.binary_cross_entropy_with_logits(se_logits, presence.to(se_logits))
            total = total + self.se_weight * parts["se"]
        return total, {name: value.item() for name, value in parts.items()}


def _as_weight_tensor(
    class_weights: Sequence[float] | Tensor | None, num_classes: int
) -> Tensor | None:
    if class_weights is None:
        return None
    weight = torch.as_tensor(class_weights, dtype=torch.float32).flatten().clone()
    if weight.numel() != num_classes:
        raise ValueError(
            f"class_weights has {weight.numel()} values but num_classes is {num_classes}; "
            "give one weight per class"
        )
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise ValueError(f"class_weights must be finite and >= 0, got {weight.tolist()}")
    return weight


def build_criterion(
    name: str = "ce",
    *,
    num_classes: int,
    ignore_index: int = 255,
    class_weights: Sequence[float] | Tensor | None = None,
    focal_gamma: float = 2.0,
    aux_weight: float = 0.4,
    se_weight: float = 0.2,
    dice_weight: float = 1.0,
    label_smoothing: float = 0.0,
    ohem_thresh: float | None = None,
    ohem_min_kept: int = 100_000,
) -> SegmentationLoss:
    """Build the training criterion.

    Args:
        name: main loss, one of ``ce``, ``focal``, ``dice``, ``ce+dice``.
        num_classes: number of classes ``C``.
        ignore_index: target value of pixels that do not contribute.
        class_weights: optional ``C`` per-class weights (CE weights; alpha for focal; unused
            by pure dice), e.g. from :func:`compute_class_weights`.
        focal_gamma: focusing parameter of the focal loss (0 gives plain CE).
        aux_weight: weight of the auxiliary-head loss. 0.4 follows mmsegmentation;
            PyTorch-Encoding uses 0.2 and torchvision's reference scripts 0.5.
        se_weight: weight of EncNet's SE loss (0.2 as in PyTorch-Encoding).
        dice_weight: weight of the dice term in ``ce+dice``.
        label_smoothing: share of each pixel's target spread evenly over the ``C`` classes, for
            the cross-entropy of ``ce`` and ``ce+dice`` (0: off).
        ohem_thresh: online hard example mining for that cross-entropy: pixels whose
            probability of their class is below it count (None: every pixel counts).
        ohem_min_kept: with mining, the number of hardest pixels of the batch that always
            count. 0.7 and 100000 are the values of mmsegmentation's Cityscapes recipes.

    Returns:
        A :class:`SegmentationLoss`; call it as ``loss, parts = criterion(outputs, target)``.

    Raises:
        ValueError: for an unknown ``name``, ``class_weights`` of the wrong length, or label
            smoothing or mining with a loss that has no cross-entropy term.
    """
    weight = _as_weight_tensor(class_weights, num_classes)
    if name in ("ce", "ce+dice"):
        ce = CrossEntropyLoss(weight, ignore_index, label_smoothing, ohem_thresh, ohem_min_kept)
        loss: nn.Module = ce if name == "ce" else CEDiceLoss(ce, dice_weight)
    elif name in ("focal", "dice"):
        ce_options = [f"label_smoothing={label_smoothing}"] if label_smoothing else []
        ce_options += [] if ohem_thresh is None else [f"ohem_thresh={ohem_thresh}"]
        if ce_options:
            given = " and ".join(ce_options)
            raise ValueError(
                f"the {name} loss has no cross-entropy for {given}: choose the ce or ce+dice "
                f"loss, or leave out {given}"
            )
        loss = (
            FocalLoss(focal_gamma, weight, ignore_index)
            if name == "focal"
            else DiceLoss(ignore_index)
        )
    else:
        raise ValueError(f"unknown loss {name!r}; valid choices: {', '.join(LOSSES)}")
    return SegmentationLoss(
        loss,
        num_classes=num_classes,
        ignore_index=ignore_index,
        aux_weight=aux_weight,
        se_weight=se_weight,
    )


def class_pixel_counts(
    masks: Iterable[Tensor | np.ndarray], num_classes: int, ignore_index: int = 255
) -> Tensor:
    """Number of pixels of each class over all ``masks`` (any shape), ignore pixels excluded.

    Returns:
        int64 tensor of shape ``C``.

    Raises:
        ValueError: if a mask holds a value outside ``[0, C)`` that is not ``ignore_index``.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for mask in masks:
        values = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        values = values.flatten().long()
        values = values[values != ignore_index]
        bad = (values < 0) | (values >= num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"mask values {torch.unique(values[bad]).tolist()[:20]} are outside "
                f"[0, {num_classes}) and not ignore_index={ignore_index}"
            )
        counts += torch.bincount(values, minlength=num_classes).cpu()
    return counts


def compute_class_weights(
    masks: Iterable[Tensor | np.ndarray], num_classes: int, ignore_index: int = 255, c: float = 1.02
) -> Tensor:
    """Inverse-log-frequency class weights of ENet (Paszke et al. 2016): ``1 / ln(c + p_k)``.

    ``p_k`` is class ``k``'s share of the labelled pixels. The weights lie in
    ``[1 / ln(c + 1), 1 / ln(c)]`` (about 1.4 to 50.5 for ``c = 1.02``). A class with no pixel
    gets the formula's own value at ``p_k = 0``, the largest weight ``1 / ln(c)``: it never
    appears as a target, so under CE or focal its weight has no effect on training.

    Args:
        masks: class-index masks (tensors or arrays), e.g. iterated from a dataset.
        num_classes: number of classes ``C``.
        ignore_index: mask value excluded from the counts.
        c: ENet's constant, ``> 1`` so every weight is finite and positive.

    Returns:
        float32 tensor of shape ``C``.
    """
    if c <= 1:
        raise ValueError(f"c must be > 1 so that ln(c + p) > 0, got {c}")
    counts = class_pixel_counts(masks, num_classes, ignore_index).double()
    total = counts.sum()
    if total == 0:
        raise ValueError("the masks contain no labelled pixel; cannot compute class weights")
    return (1.0 / torch.log(c + counts / total)).float()
