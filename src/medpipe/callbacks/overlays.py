"""Validation overlays: image, ground-truth contour and predicted contour, saved as PNG.

Every ``every_n_epochs`` epochs the same validation images (chosen once: evenly spaced over the
split, images with foreground first) are segmented and drawn in one figure,
``<dir>/epoch_<NNN>.png``, so that training progress can be seen, not only read from Dice.
Truth is drawn in green, prediction in red (dashed). Figures are written atomically.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch

from medpipe.io import atomic_path

log = logging.getLogger(__name__)

TRUTH_COLOR, PRED_COLOR = "#00d000", "#ff2020"


def save_overlay_grid(
    path: str | Path,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    suptitle: str = "",
) -> Path:
    """One panel per image (uint8 HxW or HxWxC) with truth/prediction mask contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(
        rows, cols, figsize=(3 * cols, 3.3 * rows + 0.5), dpi=100, squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img, truth, pred, title in zip(
        axes.ravel(), images, truths, preds, titles, strict=False
    ):
        img = np.asarray(img)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no contour levels" for empty masks
            if np.any(truth):
                ax.contour(np.asarray(truth) > 0, levels=[0.5], colors=TRUTH_COLOR, linewidths=1.2)
            if np.any(pred):
                ax.contour(
                    np.asarray(pred) > 0,
                    levels=[0.5],
                    colors=PRED_COLOR,
                    linewidths=1.2,
                    linestyles="dashed",
                )
        ax.set_title(title, fontsize=8)
    handles = [
        Line2D([], [], color=TRUTH_COLOR, label="truth"),
        Line2D([], [], color=PRED_COLOR, linestyle="--", label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def pick_indices(positive: Sequence[bool], n: int) -> list[int]:
    """``n`` fixed indices: evenly spaced over images with foreground, then over the others."""
    pos = [i for i, p in enumerate(positive) if p]
    neg = [i for i, p in enumerate(positive) if not p]
    out: list[int] = []
    for group in (pos, neg):
        k = min(n - len(out), len(group))
        if k > 0:
            out += [group[j] for j in np.linspace(0, len(group) - 1, k).round().astype(int)]
    return sorted(dict.fromkeys(out))


class ValidationOverlays(L.Callback):
    """Save overlays of ``n_images`` fixed validation images every ``every_n_epochs`` epochs."""

    def __init__(
        self,
        dirpath: str | Path,
        *,
        every_n_epochs: int = 5,
        n_images: int = 4,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.n_images = max(1, int(n_images))
        self.threshold = float(threshold)
        self.indices: list[int] | None = None
        self.saved: list[Path] = []

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._due(trainer):
            return
        dm = trainer.datamodule
        ds = getattr(dm, "datasets", {}).get("val") if dm is not None else None
        if ds is None or len(ds) == 0 or not hasattr(ds, "display"):
            return
        if self.indices is None:
            positive = [bool(np.any(ds.display(i)[1])) for i in range(len(ds))]
            self.indices = pick_indices(positive, self.n_images)
        items = [ds[i] for i in self.indices]
        x = torch.stack([it["image"] for it in items]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            logits = pl_module(x)
        pl_module.train(was_training)
        if logits.shape[1] == 1:
            preds = (torch.sigmoid(logits[:, 0]) > self.threshold).cpu().numpy()
        else:
            preds = logits.argmax(dim=1).cpu().numpy()
        shown = [ds.display(i) for i in self.indices]
        names = [ds.samples[i].id for i in self.indices]
        path = self.dirpath / f"epoch_{trainer.current_epoch + 1:03d}.png"
        save_overlay_grid(
            path,
            [img for img, _ in shown],
            [m for _, m in shown],
            list(preds),
            names,
            suptitle=f"validation, epoch {trainer.current_epoch + 1}",
        )
        self.saved.append(path)
        log.debug("saved validation overlays to %s", path)
