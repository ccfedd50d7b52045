"""What experiment trackers show beyond scalar curves: predictions and the confusion matrix.

:class:`PredictionSamples` runs once, on rank 0, when fitting ends: it scores the validation split
with the best checkpoint's weights in one process (every sample once, in order) and logs

- W&B: ``val/predictions`` (a sample of images captioned with true and predicted class and the
  probability) and ``val/confusion_matrix`` (W&B's confusion-matrix chart);
- DVCLive: ``plots/sklearn/val_confusion_matrix.json`` (a ``dvc plots`` confusion matrix) and the
  sample images under ``plots/images/val_predictions/``.

Other loggers (CSV) have nowhere to put them and are skipped; so are multi-label tasks (no
confusion matrix) and tasks whose ``predict_step`` does not return ``probs`` and ``target``.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from medpipe.distributed import sequential_copy

log = logging.getLogger(__name__)

TRACKERS = ("WandbLogger", "DVCLiveLogger")
SINGLE_LABEL = ("binary-class", "multi-class", "ordinal-regression")


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """CHW normalised tensor -> HW or HWC uint8, min-max scaled per image for display."""
    x = image.detach().float().cpu()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    arr = (x * 255).round().to(torch.uint8).numpy()
    return arr[0] if arr.shape[0] == 1 else np.transpose(arr, (1, 2, 0))


class PredictionSamples(L.Callback):
    """Logs sample predictions and the validation confusion matrix of the best checkpoint."""

    def __init__(self, num_images: int = 16) -> None:
        self.num_images = int(num_images)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trackers = [lg for lg in trainer.loggers if type(lg).__name__ in TRACKERS]
        if not trainer.is_global_zero or not trackers:
            return
        task_type = getattr(pl_module, "task_type", None)
        dm = trainer.datamodule
        if task_type not in SINGLE_LABEL or dm is None or not hasattr(dm, "val_dataloader"):
            return
        loader = sequential_copy(dm.val_dataloader())
        if loader is None:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        current = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        try:
            if best:
                state = torch.load(best, map_location=pl_module.device, weights_only=False)
                pl_module.load_state_dict(state["state_dict"])
            images, out = self._predict(trainer, pl_module, loader)
        finally:
            pl_module.load_state_dict(current)
        if out is None:
            return
        names = [str(n) for n in getattr(pl_module.hparams, "class_names", None) or []]
        self._log(trackers, images, out, task_type, names, pl_module)

    def _predict(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: Any
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor] | None]:
        was_training = pl_module.training
        pl_module.eval()
        images: list[torch.Tensor] = []
        outs: list[dict[str, torch.Tensor]] = []
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                for i, batch in enumerate(loader):
                    if len(images) < self.num_images:
                        x = batch[0] if isinstance(batch, (list, tuple)) else batch.get("image")
                        if isinstance(x, torch.Tensor):
                            images.extend(x[: self.num_images - len(images)].cpu())
                    out = pl_module.predict_step(move_data_to_device(batch, pl_module.device), i)
                    if not isinstance(out, dict) or not {"probs", "target"} <= set(out):
                        return images, None
                    outs.append({k: out[k].float().cpu() for k in ("probs", "target")})
        finally:
            pl_module.train(was_training)
        return images, {k: torch.cat([o[k] for o in outs]) for k in ("probs", "target")}

    def _log(
        self,
        trackers: list[Any],
        images: list[torch.Tensor],
        out: dict[str, torch.Tensor],
        task_type: str,
        names: list[str],
        pl_module: L.LightningModule,
    ) -> None:
        probs, target = out["probs"], out["target"].long().reshape(-1)
        if task_type == "binary-class":
            threshold = float(getattr(pl_module.hparams, "threshold", 0.5))
            p1 = probs.reshape(-1)
            pred = (p1 >= threshold).long()
            confidence = torch.where(pred == 1, p1, 1 - p1)
        else:
            confidence, pred = probs.max(dim=1)
        k = int(max(int(target.max()), int(pred.max())) + 1)
        names = names if len(names) >= k else [str(i) for i in range(k)]
        captions = [
            f"true: {names[int(t)]} / pred: {names[int(p)]} ({float(c):.2f})"
            for t, p, c in zip(target, pred, confidence, strict=False)
        ][: len(images)]
        pictures = [_to_uint8(x) for x in images]
        y_true, y_pred = target.tolist(), pred.tolist()
        for lg in trackers:
            try:
                if type(lg).__name__ == "WandbLogger":
                    import wandb

                    lg.log_image(key="val/predictions", images=pictures, caption=captions)
                    lg.experiment.log(
                        {
                            "val/confusion_matrix": wandb.plot.confusion_matrix(
                                y_true=y_true, preds=y_pred, class_names=names
                            )
                        }
                    )
                else:  # DVCLive
                    live = lg.experiment
                    live.log_sklearn_plot(
                        "confusion_matrix",
                        [names[i] for i in y_true],
                        [names[i] for i in y_pred],
                        name="val_confusion_matrix.json",
                        title="Confusion matrix (val, best checkpoint)",
                    )
                    for i, picture in enumerate(pictures):
                        live.log_image(f"val_predictions/{i:02d}.png", picture)
            except Exception as exc:  # a tracker hiccup must not fail a finished training run
                log.warning("could not log predictions to %s: %s", type(lg).__name__, exc)
