"""Binary (and multi-class Dice) segmentation metrics with explicitly stated definitions.

Why not just torchmetrics / scikit-learn / MONAI: papers and challenges report *per-image* Dice
and IoU averaged over images, and each library treats an image whose prediction and ground truth
are both empty differently (NaN, 0, skipped, or a ``zero_division`` knob whose default changed
between versions). Here the rule is fixed and documented: both empty -> 1.0, exactly one empty ->
0.0. The ISIC 2018 lesion-segmentation score (per-image Jaccard, values below 0.65 counted as 0,
then averaged) is provided by none of them. scikit-learn remains the reference for the pooled
("micro") values, which the tests check against.

Inputs are torch tensors or numpy arrays of shape ``(N, H, W)`` or ``(N, 1, H, W)``:

* ``preds``: probabilities in [0, 1] (or logits with ``from_logits=True``), thresholded as
  ``prob > threshold`` (the torchmetrics convention); bool predictions are used as they are;
* ``target``: a binary mask, nonzero = foreground.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from medpipe.errors import ConfigError

ArrayLike = Tensor | np.ndarray

ISIC_JACCARD_CUTOFF = 0.65


def _as_tensor(x: ArrayLike) -> Tensor:
    return x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))


def _images(x: Tensor, name: str) -> Tensor:
    """(N, H, W) or (N, 1, H, W) -> (N, H*W)."""
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(
            f"{name} must have shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}; "
            "add a batch dimension for a single image"
        )
    return x.reshape(x.shape[0], -1)


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not (
        isinstance(threshold, int | float) and 0.0 <= float(threshold) <= 1.0
    ):
        raise ConfigError(
            f"threshold={threshold!r} must be a probability in [0, 1] (it is applied after the "
            "sigmoid when from_logits=True)"
        )
    return float(threshold)


def binarize(preds: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False) -> Tensor:
    """Turn probabilities (or logits) into a bool mask: ``sigmoid?(preds) > threshold``."""
    threshold = _check_threshold(threshold)
    preds = _as_tensor(preds)
    if preds.dtype == torch.bool:
        return preds
    preds = preds.double()
    if from_logits:
        preds = torch.sigmoid(preds)
    elif preds.numel() and (preds.min() < 0 or preds.max() > 1):
        raise ConfigError(
            f"predictions range over [{preds.min().item():.3g}, {preds.max().item():.3g}], "
            "outside [0, 1]: pass from_logits=True for raw model outputs, or apply a sigmoid first"
        )
    return preds > threshold


def confusion_per_image(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-image pixel counts ``(tp, fp, fn, tn)``, each an int64 tensor of shape (N,)."""
    p = _images(binarize(preds, threshold=threshold, from_logits=from_logits), "preds")
    t = _images(_as_tensor(target), "target").to(p.device) != 0
    if p.shape != t.shape:
        raise ValueError(
            f"preds and target differ in shape: {tuple(p.shape)} vs {tuple(t.shape)} "
            "(as (N, H*W)); each prediction needs a mask of the same size"
        )
    tp = (p & t).sum(dim=1)
    fp = (p & ~t).sum(dim=1)
    fn = (~p & t).sum(dim=1)
    tn = (~p & ~t).sum(dim=1)
    return tp, fp, fn, tn


def _ratio_or_one(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 1.0 where den == 0 (nothing predicted and nothing to find)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(den))


def dice_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """Dice = 2TP / (2TP + FP + FN), 1.0 when prediction and truth are both empty."""
    return _ratio_or_one(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    """IoU (Jaccard) = TP / (TP + FP + FN), 1.0 when prediction and truth are both empty."""
    return _ratio_or_one(tp, tp + fp + fn)


def thresholded_jaccard_from_iou(iou: Tensor, cutoff: float = ISIC_JACCARD_CUTOFF) -> Tensor:
    """ISIC 2018: per-image Jaccard values below ``cutoff`` count as 0 (mean taken by caller)."""
    return torch.where(iou < cutoff, torch.zeros_like(iou), iou)


def dice_per_image(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> Tensor:
    """Dice of each image, shape (N,), float64, with the empty-mask rule."""
    tp, fp, fn, _ = confusion_per_image(preds, target, threshold=threshold, from_logits=from_logits)
    return dice_from_counts(tp, fp, fn)


def iou_per_image(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> Tensor:
    """IoU of each image, shape (N,), float64, with the empty-mask rule."""
    tp, fp, fn, _ = confusion_per_image(preds, target, threshold=threshold, from_logits=from_logits)
    return iou_from_counts(tp, fp, fn)


def dice_score(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Mean over images of the per-image Dice (how segmentation papers usually report it)."""
    return _mean(dice_per_image(preds, target, threshold=threshold, from_logits=from_logits))


def iou_score(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Mean over images of the per-image IoU."""
    return _mean(iou_per_image(preds, target, threshold=threshold, from_logits=from_logits))


def dice_micro(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Dice of TP/FP/FN pooled over the whole dataset (= pixel F1); all empty -> 1.0."""
    tp, fp, fn, _ = confusion_per_image(preds, target, threshold=threshold, from_logits=from_logits)
    return dice_from_counts(tp.sum(), fp.sum(), fn.sum()).item()


def iou_micro(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """IoU of TP/FP/FN pooled over the whole dataset; all empty -> 1.0."""
    tp, fp, fn, _ = confusion_per_image(preds, target, threshold=threshold, from_logits=from_logits)
    return iou_from_counts(tp.sum(), fp.sum(), fn.sum()).item()


def pixel_accuracy(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> float:
    """Fraction of all pixels classified correctly (dominated by background; report with Dice)."""
    tp, fp, fn, tn = confusion_per_image(
        preds, target, threshold=threshold, from_logits=from_logits
    )
    total = (tp + fp + fn + tn).sum().item()
    return (tp.sum() + tn.sum()).item() / total if total else math.nan


def jaccard_thresholded(
    preds: ArrayLike,
    target: ArrayLike,
    *,
    threshold: float = 0.5,
    from_logits: bool = False,
    cutoff: float = ISIC_JACCARD_CUTOFF,
) -> float:
    """ISIC 2018 Task 1 score: mean per-image Jaccard, where values below 0.65 count as 0."""
    iou = iou_per_image(preds, target, threshold=threshold, from_logits=from_logits)
    return _mean(thresholded_jaccard_from_iou(iou, cutoff))


def segmentation_metrics(
    preds: ArrayLike, target: ArrayLike, *, threshold: float = 0.5, from_logits: bool = False
) -> dict[str, float]:
    """All binary metrics in one thresholding pass, keyed like :class:`SegmentationMetrics`."""
    tp, fp, fn, tn = confusion_per_image(
        preds, target, threshold=threshold, from_logits=from_logits
    )
    return {
        k: float(v)
        for k, v in _summarise(
            tp, fp, fn, tn, dice_from_counts(tp, fp, fn), iou_from_counts(tp, fp, fn)
        ).items()
    }


def _mean(x: Tensor) -> float:
    return x.mean().item() if x.numel() else math.nan


def _summarise(
    tp: Tensor,
    fp: Tensor,
    fn: Tensor,
    tn: Tensor,
    dice: Tensor,
    iou: Tensor,
    cutoff: float = ISIC_JACCARD_CUTOFF,
) -> dict[str, Tensor]:
    """Metric dict from per-image dice/iou and (per-image or summed) counts."""
    tp, fp, fn, tn = (c.sum() for c in (tp, fp, fn, tn))
    total = (tp + fp + fn + tn).double()
    nan = torch.tensor(math.nan, dtype=torch.float64, device=dice.device)
    return {
        "dice": dice.mean() if dice.numel() else nan,
        "iou": iou.mean() if iou.numel() else nan,
        "dice_micro": dice_from_counts(tp, fp, fn),
        "iou_micro": iou_from_counts(tp, fp, fn),
        "pixel_accuracy": (tp + tn).double() / total if total > 0 else nan,
        "jaccard_thresholded": thresholded_jaccard_from_iou(iou, cutoff).mean()
        if iou.numel()
        else nan,
    }


class SegmentationMetrics(Metric):
    """Accumulating binary segmentation metrics for Lightning loops (DDP-safe).

    Per-image Dice/IoU are kept as lists (gathered with ``cat`` across processes, since a mean of
    per-process means would weight processes instead of images); TP/FP/FN/TN are summed.
    ``compute()`` returns the same keys as :func:`segmentation_metrics`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        threshold: float = 0.5,
        from_logits: bool = False,
        jaccard_cutoff: float = ISIC_JACCARD_CUTOFF,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self.threshold = _check_threshold(threshold)
        self.from_logits = from_logits
        self.jaccard_cutoff = jaccard_cutoff
        self.add_state("dice_values", default=[], dist_reduce_fx="cat")
        self.add_state("iou_values", default=[], dist_reduce_fx="cat")
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: ArrayLike, target: ArrayLike) -> None:
        """Add one batch of predictions and masks."""
        tp, fp, fn, tn = confusion_per_image(
            preds, target, threshold=self.threshold, from_logits=self.from_logits
        )
        self.dice_values.append(dice_from_counts(tp, fp, fn))
        self.iou_values.append(iou_from_counts(tp, fp, fn))
        self.tp += tp.sum().to(self.tp.device)
        self.fp += fp.sum().to(self.fp.device)
        self.fn += fn.sum().to(self.fn.device)
        self.tn += tn.sum().to(self.tn.device)

    def compute(self) -> dict[str, Tensor]:
        """Dict with ``dice``, ``iou``, ``dice_micro``, ``iou_micro``, ``pixel_accuracy``,
        ``jaccard_thresholded`` (NaN for per-image values before any update)."""
        dice, iou = _cat(self.dice_values), _cat(self.iou_values)
        return _summarise(self.tp, self.fp, self.fn, self.tn, dice, iou, cutoff=self.jaccard_cutoff)


def _cat(values: list[Tensor] | Tensor) -> Tensor:
    if isinstance(values, Tensor):  # already concatenated by a distributed sync
        return values.reshape(-1)
    if not values:
        return torch.empty(0, dtype=torch.float64)
    return torch.cat([v.reshape(-1) for v in values])


def multiclass_dice_per_class(
    preds: ArrayLike, target: ArrayLike, num_classes: int, *, ignore_index: int | None = None
) -> Tensor:
    """Dice of each class over all pixels, shape (num_classes,); NaN where a class is absent
    from both prediction and truth (so it neither rewards nor punishes the mean).

    ``preds`` is a class-index mask (N, H, W) / (N, 1, H, W), or scores (N, C, H, W) that are
    arg-maxed; ``target`` a class-index mask. Pixels whose target is ``ignore_index`` are skipped.
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes={num_classes} must be >= 1")
    p, t = _as_tensor(preds), _as_tensor(target)
    if p.ndim == 4 and p.shape[1] == num_classes and num_classes > 1:
        p = p.argmax(dim=1)
    p = _images(p, "preds").long()
    t = _images(t, "target").long().to(p.device)
    if p.shape != t.shape:
        raise ValueError(
            f"preds and target differ in shape: {tuple(p.shape)} vs {tuple(t.shape)} "
            "(as (N, H*W)); each prediction needs a mask of the same size"
        )
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    p, t = p[keep], t[keep]
    for name, x in (("preds", p), ("target", t)):
        if x.numel() and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(
                f"{name} holds class index {x.min().item() if x.min() < 0 else x.max().item()} "
                f"outside [0, {num_classes - 1}] for num_classes={num_classes}"
            )
    conf = torch.bincount(t * num_classes + p, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    tp = conf.diag()
    fp = conf.sum(dim=0) - tp
    fn = conf.sum(dim=1) - tp
    den = (2 * tp + fp + fn).double()
    return torch.where(den > 0, 2 * tp.double() / den.clamp_min(1), torch.nan)


def multiclass_dice(
    preds: ArrayLike, target: ArrayLike, num_classes: int, *, ignore_index: int | None = None
) -> float:
    """Mean per-class Dice over the classes present in prediction or truth (1.0 if none is)."""
    per_class = multiclass_dice_per_class(preds, target, num_classes, ignore_index=ignore_index)
    present = per_class[~per_class.isnan()]
    return present.mean().item() if present.numel() else 1.0
