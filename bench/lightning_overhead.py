"""Lightning overhead: medpipe's end-to-end training throughput vs a plain PyTorch loop.

    MEDPIPE_DATA_MIRROR=../shared/data uv run python bench/lightning_overhead.py [--batches 10]

Both sides train the same ResNet-18 (``conf/model/resnet18.yaml``: torchvision, small-input stem,
one logit) on PneumoniaMNIST 28x28 with batch 128 and AdamW(lr=2e-3, weight_decay=1e-4):

- **medpipe**: ``medpipe.stages.train.run`` with the default config (``data.num_workers`` as
  given): the DataModule with its per-sample albumentations pipeline, the task, medpipe's
  callbacks, checkpoint writing, CSV logging, the LR scheduler. Two epochs of ``--batches``
  batches; the second is timed, from its start to its last batch (validation off).
- **plain**: a ``for`` loop over the training tensors preloaded (normalised, on the device),
  a random permutation per epoch, forward, loss, backward, step; ``--warmup`` batches, then
  ``--batches`` timed.

Printed: images/s of each and ratio = medpipe / plain (target >= 0.9), also with augmentation
off to separate the data pipeline's cost from Lightning's. When CUDA is available the same is
run on the GPU in 32-true and bf16-mixed. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BATCH = 128
LR, WEIGHT_DECAY = 2e-3, 1e-4


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def plain_loop(device: str, precision: str, batches: int, warmup: int, data_root: Path) -> float:
    """images/s of a bare PyTorch training loop over preloaded tensors."""
    import numpy as np
    import torch

    from medpipe.models.registry import build_model

    with np.load(data_root / "pneumoniamnist.npz") as npz:
        x = torch.from_numpy(npz["train_images"]).float().div(255).sub(0.5).div(0.5)
        y = torch.from_numpy(npz["train_labels"].reshape(-1)).float()
    x, y = x.unsqueeze(1).to(device), y.to(device)
    model = build_model(
        "resnet18", in_channels=1, num_classes=1, source="torchvision", small_input=True
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    model.train()

    def step(idx: Any) -> None:
        with autocast:
            loss = loss_fn(model(x[idx]).reshape(-1), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    order = torch.randperm(len(x), device=device)
    for i in range(warmup):
        step(order[i * BATCH : (i + 1) * BATCH])
    _sync(device)
    start = time.perf_counter()
    order = torch.randperm(len(x), device=device)
    for i in range(batches):
        step(order[i * BATCH : (i + 1) * BATCH])
    _sync(device)
    return batches * BATCH / (time.perf_counter() - start)


def medpipe_run(device: str, precision: str, batches: int, augment: bool, workers: int) -> float:
    """images/s of the second training epoch of ``medpipe train`` (validation off)."""
    import lightning as L

    from medpipe.config import compose
    from medpipe.data.registry import build_datamodule
    from medpipe.stages import train

    class Throughput(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
            _sync(device)
            self.start, self.images = time.perf_counter(), 0

        def on_train_batch_end(
            self, trainer: L.Trainer, pl_module: Any, out: Any, batch: Any, i: int
        ) -> None:
            self.images += len(batch[0])
            if i == batches - 1:
                _sync(device)
                self.rate = self.images / (time.perf_counter() - self.start)

    overrides = [
        "trainer=gpu" if device == "cuda" else "trainer=cpu",
        f"trainer.precision={precision}",
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        f"data.num_workers={workers}",
        f"data.persistent_workers={str(workers > 0).lower()}",
        f"data.pin_memory={str(device == 'cuda').lower()}",
        "data.root=data/pneumoniamnist",
        "resume=never",
    ]
    if not augment:
        overrides.append("data.train_augment=[]")
    cfg = compose(overrides)
    build_datamodule(cfg.data).fetch()
    timer = Throughput()
    train.run(cfg, callbacks=[timer])
    return timer.rate


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=10, help="timed batches (default 10)")
    p.add_argument("--warmup", type=int, default=5, help="plain loop warm-up batches")
    p.add_argument(
        "--workers", type=int, default=None, help="data.num_workers (default 0 CPU, 8 GPU)"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("MEDPIPE_CONFIG_DIR", str(REPO / "conf"))
    os.environ.setdefault("MEDPIPE_DATA_MIRROR", str(REPO.parent / "shared" / "data"))
    import logging
    import warnings

    import lightning  # noqa: F401  (sets its loggers' levels on import; quiet them after)

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "medpipe"):
        logging.getLogger(name).setLevel(logging.ERROR)

    settings = [("cpu", "32-true")]
    if torch.cuda.is_available():
        settings += [("cuda", "32-true"), ("cuda", "bf16-mixed")]
    else:
        print("CUDA is not available here: GPU figures (32-true, bf16-mixed) not measured.")
    print(
        f"ResNet-18 (small input) on PneumoniaMNIST 28x28, batch {BATCH}, AdamW; "
        f"{args.batches} timed batches; torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        for device, precision in settings:
            workers = args.workers if args.workers is not None else (8 if device == "cuda" else 0)
            mp = medpipe_run(device, precision, args.batches, True, workers)
            data_root = Path(tmp) / "data" / "pneumoniamnist"
            plain = [plain_loop(device, precision, args.batches, args.warmup, data_root)]
            mp_noaug = medpipe_run(device, precision, args.batches, False, workers)
            plain.append(plain_loop(device, precision, args.batches, args.warmup, data_root))
            base = sum(plain) / len(plain)
            rows.append((device, precision, workers, base, plain, mp, mp_noaug))
    print(
        f"\n{'device':6} {'precision':10} {'workers':>7} {'plain img/s':>12} "
        f"{'medpipe img/s':>14} {'ratio':>6} {'no-aug img/s':>13} {'ratio':>6}"
    )
    for device, precision, workers, base, plain, mp, mp_noaug in rows:
        print(
            f"{device:6} {precision:10} {workers:7d} {base:12.1f} {mp:14.1f} {mp / base:6.3f} "
            f"{mp_noaug:13.1f} {mp_noaug / base:6.3f}   (plain runs: "
            + ", ".join(f"{v:.1f}" for v in plain)
            + ")"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
