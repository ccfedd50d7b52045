"""Malaria benchmarks: data-path speed and from-scratch vs linear probe vs fine-tune.

Prints figures, asserts nothing (the README quotes them). Two parts:

``speed``  images/s of the training loader after ``medpipe prepare`` (uint8 cache, batch-wise
           normalisation, the configured flips/rotations) vs torchvision ``ImageFolder`` with
           PIL decode + resize to the same size and the same augmentations, on the shared cells
           (50x50 grey PNGs) and on generated RGB PNGs the size of the NIH originals (~100-200 px).
``quality`` trains and scores ``malaria_cnn``, ``malaria_effnet_probe`` and
           ``malaria_effnet_finetune`` on the shared cells with a patient-level split (one
           grouped split per seed, the DVC experiments' split for seed 42) and prints ACC, F1 and
           ROC-AUC on the unseen-patient test split, mean and spread over seeds.

Usage (from the repository root; outputs under bench/results/, git-ignored)::

    MEDPIPE_DATA_MIRROR=../shared/data uv run python bench/malaria_transfer.py speed
    MEDPIPE_DATA_MIRROR=../shared/data uv run python bench/malaria_transfer.py quality --seeds 42 1 2

Full NIH data on a GPU (27,558 cells, the published patient-level anchor is ACC 0.957 /
AUC 0.990 with a pretrained ResNet-50, Rajaraman et al. 2018)::

    uv run medpipe fetch data=malaria data.source=nlm
    uv run medpipe prepare data=malaria data.size=128
    uv run medpipe train experiment=malaria_effnet_finetune trainer=gpu data.size=128 \\
        model.backbone=resnet50 model.pretrained=imagenet data.num_workers=8 trainer.max_epochs=15
    uv run medpipe evaluate experiment=malaria_effnet_finetune data.size=128 \\
        model.backbone=resnet50 model.pretrained=imagenet
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "malaria"
EXPERIMENTS = ("malaria_cnn", "malaria_effnet_probe", "malaria_effnet_finetune")
FLIPS = [
    {"name": "HorizontalFlip", "p": 0.5},
    {"name": "VerticalFlip", "p": 0.5},
    {"name": "RandomRotate90", "p": 1.0},
]
#: conf/data/malaria.yaml's train_augment: the flips plus per-image photometric/affine jitter
DEFAULT = [
    *FLIPS,
    {"name": "RandomBrightnessContrast", "p": 0.8},
    {"name": "Affine", "scale": [0.9, 1.1], "rotate": [-20, 20], "p": 0.7},
]


def _mirror() -> Path:
    mirror = Path(os.environ.get("MEDPIPE_DATA_MIRROR", ROOT.parent / "shared" / "data"))
    if not (mirror / "malaria" / "cell_images").is_dir():
        sys.exit(f"no malaria cells under {mirror}; set MEDPIPE_DATA_MIRROR")
    return mirror


# ------------------------------------------------------------------------------------ speed


def _images_per_second(loader, epochs: int) -> float:
    n, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _y in loader:
            n += len(x)
    return n / (time.perf_counter() - start)


def _imagefolder_loader(cells: Path, size: int, batch_size: int, jitter: bool):
    """torchvision's ImageFolder (PIL decode per item) with the same augmentations."""
    import torch
    from torchvision import datasets, transforms

    class Rot90:  # torchvision has no random 90-degree rotation; same as albumentations'
        def __call__(self, img):
            return img.rotate(90 * int(torch.randint(4, ())))  # square after Resize

    steps = [
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomVerticalFlip(),
        Rot90(),
    ]
    if jitter:
        steps += [
            transforms.RandomApply([transforms.ColorJitter(brightness=0.2, contrast=0.2)], p=0.8),
            transforms.RandomApply([transforms.RandomAffine(degrees=20, scale=(0.9, 1.1))], p=0.7),
        ]
    steps += [transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)]
    tf = transforms.Compose(steps)
    ds = datasets.ImageFolder(str(cells), transform=tf)  # PIL decode + RGB convert per item
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)


def _fake_originals(dest: Path, n_per_class: int = 400) -> Path:
    """RGB PNGs the size of the NIH originals (random 100-200 px sides), NLM names."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, cls in enumerate(("Uninfected", "Parasitized")):
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = (int(v) for v in rng.integers(100, 200, 2))
            yy, xx = np.mgrid[:h, :w]
            disk = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 2.2) ** 2
            img = np.zeros((h, w, 3), np.uint8)
            img[disk] = (200, 120 + 40 * label, 150)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(dest / cls / f"C{i % 40 + 1}P{label}_IMG_0_cell_{i}.png")
    return dest


def speed(size: int, epochs: int, batch_size: int) -> None:
    from medpipe.data.malaria import MalariaDataModule

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _fake_originals(tmp / "mirror" / "malaria" / "cell_images")
        sets = {
            "shared cells (50x50 grey PNG)": _mirror(),
            "NIH-size RGB PNGs (100-200 px)": tmp / "mirror",
        }
        print(f"data path at {size}px, batch {batch_size}, {epochs} epochs, num_workers=0")
        print(
            "| images | augmentation | ImageFolder+PIL (img/s) | prepared cache (img/s) | ratio |"
        )
        print("| --- | --- | ---: | ---: | ---: |")
        for label, mirror in sets.items():
            work = tmp / label.split()[0]
            prep = 0.0
            for aug_name, augment in (("flips, quarter turns", FLIPS), ("default", DEFAULT)):
                dm = MalariaDataModule(
                    root=work / "raw",
                    processed=work / "processed",
                    mirror=str(mirror),
                    size=size,
                    batch_size=batch_size,
                    train_augment=augment,
                    split={"method": "stratified", "val_fraction": 0.01, "test_fraction": 0.01},
                )
                dm.fetch()
                start = time.perf_counter()
                dm.prepare()  # decodes on the first pass, a no-op on the second
                prep = max(prep, time.perf_counter() - start)
                dm.setup()
                folder = _imagefolder_loader(dm.cells_dir, size, batch_size, augment is DEFAULT)
                base = _images_per_second(folder, epochs)
                fast = _images_per_second(dm.train_dataloader(), epochs)
                print(f"| {label} | {aug_name} | {base:,.0f} | {fast:,.0f} | {fast / base:.1f}x |")
            print(f"one-off prepare of {label}: {prep:.1f} s for {len(folder.dataset)} images")


# ------------------------------------------------------------------------------------ quality


def quality(seeds: list[int], experiments: list[str], epochs: int | None) -> None:
    from medpipe.config import compose
    from medpipe.data.registry import build_datamodule
    from medpipe.evaluation.inference import load_task, predict
    from medpipe.evaluation.metrics import classification_metrics
    from medpipe.stages import fetch, prepare, train

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MEDPIPE_DATA_MIRROR", str(_mirror()))
    os.environ["MEDPIPE_CONFIG_DIR"] = str(ROOT / "conf")
    paths = [f"paths.{k}={OUT / k}" for k in ("raw", "processed", "models", "metrics", "reports")]
    base = ["logger=none", *paths]
    cfg = compose(["data=malaria", *base])
    fetch.run(cfg)
    prepare.run(cfg)
    results: dict[str, list[dict[str, float]]] = {e: [] for e in experiments}
    for seed in seeds:
        for exp in experiments:
            over = [f"experiment={exp}", f"data.split.seed={seed}", f"seed={seed}", *base]
            over.append(f"name={exp}_s{seed}")
            if epochs:
                over.append(f"trainer.max_epochs={epochs}")
            cfg = compose(over)
            start = time.perf_counter()
            ckpt = train.run(cfg)
            wall = time.perf_counter() - start
            task = load_task(cfg, ckpt)
            dm = build_datamodule(cfg.data)
            dm.setup()
            out = predict(task, dm.test_dataloader())
            m = classification_metrics(out["probs"], out["target"], task.task_type, 2)
            m["wall_s"] = wall
            results[exp].append(m)
            print(
                f"seed {seed} {exp}: acc {m['accuracy']:.3f} f1 {m['f1']:.3f} "
                f"auc {m['roc_auc']:.3f} ({wall:.0f} s, test {len(out['target'])} cells)",
                flush=True,
            )

    def fmt(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.3f}"
        return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"

    print(f"\npatient-level test split, seeds {seeds} (mean ± sd over seeds)")
    print("| experiment | ACC | F1 | ROC-AUC | train wall time (s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for exp, runs in results.items():
        cols = [fmt([r[k] for r in runs]) for k in ("accuracy", "f1", "roc_auc")]
        wall = statistics.mean(r["wall_s"] for r in runs)
        print(f"| {exp} | {' | '.join(cols)} | {wall:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--batch-size", type=int, default=64)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, nargs="+", default=[42])
    q.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    q.add_argument("--epochs", type=int, help="override trainer.max_epochs")
    args = parser.parse_args()
    if args.part == "speed":
        speed(args.size, args.epochs, args.batch_size)
    else:
        quality(args.seeds, args.experiments, args.epochs)


if __name__ == "__main__":
    main()
