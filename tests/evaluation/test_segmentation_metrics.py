"""Segmentation metrics: hand-computed values, empty-mask rule, thresholds, sklearn agreement."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, jaccard_score

from medpipe.errors import ConfigError
from medpipe.evaluation.segmentation_metrics import (
    SegmentationMetrics,
    binarize,
    confusion_per_image,
    dice_micro,
    dice_per_image,
    dice_score,
    iou_micro,
    iou_per_image,
    iou_score,
    jaccard_thresholded,
    multiclass_dice,
    multiclass_dice_per_class,
    pixel_accuracy,
    segmentation_metrics,
)

KEYS = {"dice", "iou", "dice_micro", "iou_micro", "pixel_accuracy", "jaccard_thresholded"}

# Five 2x2 images: A partial overlap, B both empty, C only prediction, D only truth, E perfect.
PREDS = torch.tensor(
    [
        [[1, 1], [0, 0]],
        [[0, 0], [0, 0]],
        [[1, 0], [0, 0]],
        [[0, 0], [0, 0]],
        [[1, 1], [1, 0]],
    ],
    dtype=torch.float32,
)
TARGET = torch.tensor(
    [
        [[1, 0], [1, 0]],
        [[0, 0], [0, 0]],
        [[0, 0], [0, 0]],
        [[0, 0], [0, 1]],
        [[1, 1], [1, 0]],
    ]
)


def test_confusion_counts() -> None:
    tp, fp, fn, tn = confusion_per_image(PREDS, TARGET)
    assert tp.tolist() == [1, 0, 0, 0, 3]
    assert fp.tolist() == [1, 0, 1, 0, 0]
    assert fn.tolist() == [1, 0, 0, 1, 0]
    assert tn.tolist() == [1, 4, 3, 3, 1]


def test_hand_computed_per_image_and_means() -> None:
    assert dice_per_image(PREDS, TARGET).tolist() == pytest.approx([0.5, 1.0, 0.0, 0.0, 1.0])
    assert iou_per_image(PREDS, TARGET).tolist() == pytest.approx([1 / 3, 1.0, 0.0, 0.0, 1.0])
    assert dice_score(PREDS, TARGET) == pytest.approx(0.5)
    assert iou_score(PREDS, TARGET) == pytest.approx(7 / 15)
    # Pooled: TP=4, FP=2, FN=2, TN=12.
    assert dice_micro(PREDS, TARGET) == pytest.approx(8 / 12)
    assert iou_micro(PREDS, TARGET) == pytest.approx(4 / 8)
    assert pixel_accuracy(PREDS, TARGET) == pytest.approx(16 / 20)
    # ISIC: image A's Jaccard 1/3 < 0.65 counts as 0.
    assert jaccard_thresholded(PREDS, TARGET) == pytest.approx(2 / 5)


def test_all_at_once_matches_individual_functions() -> None:
    result = segmentation_metrics(PREDS, TARGET)
    assert set(result) == KEYS
    assert result == pytest.approx(
        {
            "dice": 0.5,
            "iou": 7 / 15,
            "dice_micro": 2 / 3,
            "iou_micro": 0.5,
            "pixel_accuracy": 0.8,
            "jaccard_thresholded": 0.4,
        }
    )


def test_thresholded_jaccard_keeps_values_at_or_above_cutoff() -> None:
    # 4x4 truth of 10 pixels; prediction covers 7 of them -> Jaccard 0.7 (kept), 6 -> 0.6 (zeroed).
    target = torch.zeros(2, 4, 4)
    target[:, :2, :] = 1
    target[:, 2, :2] = 1
    preds = torch.zeros(2, 4, 4)
    preds[0].view(-1)[:7] = 1
    preds[1].view(-1)[:6] = 1
    assert iou_per_image(preds, target).tolist() == pytest.approx([0.7, 0.6])
    assert jaccard_thresholded(preds, target) == pytest.approx(0.35)
    assert jaccard_thresholded(preds, target, cutoff=0.5) == pytest.approx(0.65)


def test_empty_rules() -> None:
    empty = torch.zeros(3, 4, 4)
    full = torch.ones(3, 4, 4)
    for fn in (dice_score, iou_score, dice_micro, iou_micro, jaccard_thresholded, pixel_accuracy):
        assert fn(empty, empty) == 1.0
    for fn in (dice_score, iou_score, dice_micro, iou_micro, jaccard_thresholded, pixel_accuracy):
        assert fn(full, empty) == 0.0
        assert fn(empty, full) == 0.0


def test_threshold_is_configurable() -> None:
    probs = torch.tensor([[[0.3, 0.6], [0.8, 0.1]]])
    target = torch.tensor([[[1, 1], [1, 0]]])
    assert dice_score(probs, target) == pytest.approx(4 / 5)  # predicts 0.6, 0.8
    assert dice_score(probs, target, threshold=0.7) == pytest.approx(2 / 4)  # only 0.8
    assert dice_score(probs, target, threshold=0.2) == pytest.approx(1.0)
    # Strictly greater than: a probability equal to the threshold is background.
    assert binarize(torch.tensor([0.5]), threshold=0.5).tolist() == [False]


def test_from_logits() -> None:
    logits = torch.tensor([[[-2.0, 0.5], [3.0, 0.0]]])
    assert binarize(logits, from_logits=True).tolist() == [[[False, True], [True, False]]]
    target = torch.tensor([[[0, 1], [1, 0]]])
    assert dice_score(logits, target, from_logits=True) == 1.0
    with pytest.raises(ConfigError, match="from_logits=True"):
        dice_score(logits, target)


@pytest.mark.parametrize("threshold", [-0.1, 1.5, "0.5"])
def test_bad_threshold(threshold) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        dice_score(PREDS, TARGET, threshold=threshold)
    with pytest.raises(ConfigError, match="threshold"):
        SegmentationMetrics(threshold=threshold)


def test_shapes_numpy_and_channel_dim() -> None:
    expected = dice_score(PREDS, TARGET)
    assert dice_score(PREDS.numpy(), TARGET.numpy()) == pytest.approx(expected)
    assert dice_score(PREDS[:, None], TARGET) == pytest.approx(expected)
    assert dice_score(PREDS.bool()[:, None], TARGET[:, None].numpy()) == pytest.approx(expected)
    with pytest.raises(ValueError, match="differ in shape"):
        dice_score(PREDS, TARGET[:, :1])
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        dice_score(PREDS[0], TARGET[0])


def _random_batch(seed: int, n: int = 6, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, 1, size, size, generator=g)
    target = (torch.rand(n, size, size, generator=g) > 0.6).long()
    target[0] = 0  # an empty truth
    probs[1] = 0.1  # an empty prediction
    return probs, target


def test_micro_values_agree_with_sklearn() -> None:
    probs, target = _random_batch(0)
    y_pred = (probs[:, 0] > 0.5).numpy().ravel()
    y_true = target.numpy().ravel()
    assert dice_micro(probs, target) == pytest.approx(f1_score(y_true, y_pred))
    assert iou_micro(probs, target) == pytest.approx(jaccard_score(y_true, y_pred))
    assert pixel_accuracy(probs, target) == pytest.approx(accuracy_score(y_true, y_pred))
    # Per image, for images where neither mask is empty.
    per_image = dice_per_image(probs, target)
    per_image_iou = iou_per_image(probs, target)
    for i in range(2, len(probs)):
        yt, yp = target[i].numpy().ravel(), (probs[i, 0] > 0.5).numpy().ravel()
        assert per_image[i].item() == pytest.approx(f1_score(yt, yp))
        assert per_image_iou[i].item() == pytest.approx(jaccard_score(yt, yp))


def test_metric_over_two_batches_equals_functional_on_concatenation() -> None:
    (p1, t1), (p2, t2) = _random_batch(1, n=4), _random_batch(2, n=3)
    metric = SegmentationMetrics(threshold=0.4)
    metric.update(p1, t1)
    metric.update(p2, t2)
    result = metric.compute()
    assert set(result) == KEYS
    expected = segmentation_metrics(torch.cat([p1, p2]), torch.cat([t1, t2]), threshold=0.4)
    assert {k: float(v) for k, v in result.items()} == pytest.approx(expected)

    metric.reset()
    metric.update(p1, t1)
    assert float(metric.compute()["dice"]) == pytest.approx(dice_score(p1, t1, threshold=0.4))


def test_metric_state_reductions() -> None:
    metric = SegmentationMetrics()
    assert metric._reductions["dice_values"].__name__ == "dim_zero_cat"
    assert metric._reductions["iou_values"].__name__ == "dim_zero_cat"
    for name in ("tp", "fp", "fn", "tn"):
        assert metric._reductions[name].__name__ == "dim_zero_sum"


def test_metric_from_logits() -> None:
    logits = torch.tensor([[[-2.0, 0.5], [3.0, 0.0]]])
    target = torch.tensor([[[0, 1], [1, 0]]])
    metric = SegmentationMetrics(from_logits=True)
    metric.update(logits, target)
    assert float(metric.compute()["dice"]) == 1.0


def test_multiclass_dice_hand_computed() -> None:
    target = torch.tensor([[[0, 0], [1, 1]]])
    preds = torch.tensor([[[0, 1], [1, 1]]])
    per_class = multiclass_dice_per_class(preds, target, num_classes=4)
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 4 / 5])
    assert math.isnan(per_class[2]) and math.isnan(per_class[3])  # absent from both: ignored
    assert multiclass_dice(preds, target, num_classes=4) == pytest.approx(11 / 15)
    # Scores (N, C, H, W) are arg-maxed.
    scores = torch.nn.functional.one_hot(preds, 4).permute(0, 3, 1, 2).float()
    assert multiclass_dice(scores, target, num_classes=4) == pytest.approx(11 / 15)
    # A class predicted but absent from the truth counts as 0.
    preds2 = torch.tensor([[[0, 0], [1, 2]]])
    assert multiclass_dice_per_class(preds2, target, num_classes=3)[2].item() == 0.0


def test_multiclass_dice_agrees_with_sklearn_and_ignore_index() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    preds = torch.randint(0, 3, (2, 8, 8), generator=g)
    expected = f1_score(target.numpy().ravel(), preds.numpy().ravel(), average=None)
    assert multiclass_dice_per_class(preds, target, 3).tolist() == pytest.approx(expected.tolist())

    target_ignored = target.clone()
    target_ignored[0] = 255
    assert multiclass_dice(preds, target_ignored, 3, ignore_index=255) == pytest.approx(
        multiclass_dice(preds[1:], target[1:], 3)
    )
    with pytest.raises(ValueError, match="class index 255"):
        multiclass_dice(preds, target_ignored, 3)
