"""Classification metrics checked against scikit-learn on fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from medpipe.evaluation.metrics import ClassificationMetrics, classification_metrics

RNG = np.random.default_rng(1234)


def test_binary_matches_sklearn():
    y = RNG.integers(0, 2, 200)
    p = np.clip(y * 0.3 + RNG.random(200) * 0.7, 0, 1)
    m = classification_metrics(torch.tensor(p), torch.tensor(y), "binary-class", 2)
    pred = (p >= 0.5).astype(int)
    tn, fp, _, _ = skm.confusion_matrix(y, pred).ravel()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-6)
    assert m["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-6)
    assert m["recall"] == pytest.approx(skm.recall_score(y, pred), abs=1e-6)
    assert m["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-6)


def test_binary_hand_computed():
    p = torch.tensor([0.9, 0.8, 0.3, 0.6, 0.1])
    y = torch.tensor([1, 1, 1, 0, 0])
    m = classification_metrics(p, y, "binary-class", 2)
    # predictions 1,1,0,1,0 -> TP=2 FP=1 FN=1 TN=1
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    # pairs (pos, neg): 0.9>0.6,0.9>0.1,0.8>0.6,0.8>0.1,0.3<0.6,0.3>0.1 -> 5/6
    assert m["roc_auc"] == pytest.approx(5 / 6)


def test_multiclass_matches_sklearn():
    y = RNG.integers(0, 4, 300)
    logits = RNG.normal(size=(300, 4)) + np.eye(4)[y] * 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(torch.tensor(p), torch.tensor(y), "multi-class", 4)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-6
    )


def test_multilabel_matches_sklearn():
    y = RNG.integers(0, 2, (150, 5))
    p = np.clip(y * 0.4 + RNG.random((150, 5)) * 0.6, 0, 1)
    m = classification_metrics(torch.tensor(p), torch.tensor(y), "multi-label", 5)
    pred = (p >= 0.5).astype(int)
    per_label_acc = np.mean([skm.accuracy_score(y[:, j], pred[:, j]) for j in range(5)])
    assert m["accuracy"] == pytest.approx(per_label_acc, abs=1e-6)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-6)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"), abs=1e-6)


def test_single_class_auc_is_nan():
    m = classification_metrics(torch.tensor([0.2, 0.7]), torch.tensor([1, 1]), "binary-class", 2)
    assert math.isnan(m["roc_auc"])


def test_accumulating_metric_equals_one_shot():
    y = RNG.integers(0, 3, 90)
    p = RNG.dirichlet(np.ones(3), 90)
    metric = ClassificationMetrics("multi-class", 3)
    metric.update(torch.tensor(p[:40]), torch.tensor(y[:40]))
    metric.update(torch.tensor(p[40:]), torch.tensor(y[40:]))
    assert metric.compute() == pytest.approx(
        classification_metrics(torch.tensor(p), torch.tensor(y), "multi-class", 3)
    )
