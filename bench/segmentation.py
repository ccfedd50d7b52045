"""Segmentation quality on CPU: train + evaluate LGG (U-Net, Tiramisu) and BUSI, print the table.

    MEDPIPE_DATA_MIRROR=../shared/data uv run python bench/segmentation.py [--threads 2]
        [--budget-min 15] [--only lgg_unet] [hydra overrides for every run...]

Runs `medpipe fetch/train/evaluate experiment=<name>` as a user would (subprocesses, the real
CLI), with data and outputs under bench/results/segmentation/ so DVC's outputs are untouched. Each
experiment gets a wall-clock budget (default 15 minutes for training and evaluation together;
training stops at `trainer.max_time` = budget minus a reserve for evaluation, or at its epoch
limit). LGG is split by patient; Dice is reported on tumour slices (`dice_positive`) and on all
test slices (`dice`, where a tumour-free slice predicted empty scores 1). BUSI reports Dice on
lesion images next to the empty-mask specificity (normal images predicted empty).
Figures are printed, never asserted. The published anchor for LGG is mean Dice 0.82 (Buda et al.
2019, all 110 patients); here only 13 patients are available.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# experiment -> extra overrides for the quality run (on top of conf/experiment/<name>.yaml)
# (epochs chosen to fit 15 minutes on a shared 2-core CPU; trainer.max_time is the hard stop)
EXPERIMENTS: dict[str, list[str]] = {
    "lgg_unet": ["trainer.max_epochs=60"],
    "lgg_tiramisu": ["trainer.max_epochs=18"],
    "busi_unet": ["trainer.max_epochs=60"],
}
OUT = Path("bench/results/segmentation")
EVAL_RESERVE_S = 120  # evaluation, start-up and the last validation pass


def run(cmd: list[str], env: dict[str, str], log: Path) -> None:
    print("$", " ".join(cmd), flush=True)
    with open(log, "a") as fh:
        subprocess.run(cmd, check=True, env=env, stdout=fh, stderr=subprocess.STDOUT)


def max_time(budget_s: int) -> str:
    s = max(60, budget_s - EVAL_RESERVE_S)
    return f"00:{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--budget-min", type=float, default=15, help="minutes per experiment")
    parser.add_argument("--only", action="append", choices=sorted(EXPERIMENTS), help="subset")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    budget_s = int(args.budget_min * 60)
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "HF_HUB_OFFLINE": "1",
    }
    OUT.mkdir(parents=True, exist_ok=True)
    common = [
        f"paths.raw={OUT}/raw",
        f"paths.processed={OUT}/processed",
        f"paths.models={OUT}/models",
        f"paths.metrics={OUT}/metrics",
        f"paths.reports={OUT}/reports",
        f"paths.logs={OUT}/logs",
        "trainer.accelerator=cpu",
        f"+trainer.max_time={max_time(budget_s)}",
    ]
    rows = []
    for name in args.only or EXPERIMENTS:
        overrides = [f"experiment={name}", *EXPERIMENTS[name], *common, *args.overrides]
        shutil.rmtree(OUT / "models" / name, ignore_errors=True)  # never resume an old run
        log = OUT / f"{name}.log"
        log.unlink(missing_ok=True)
        medpipe = [sys.executable, "-m", "medpipe.cli"]
        run([*medpipe, "fetch", *overrides], env, log)
        run([*medpipe, "prepare", *overrides], env, log)
        start = time.perf_counter()
        run([*medpipe, "train", *overrides], env, log)
        train_s = time.perf_counter() - start
        run([*medpipe, "evaluate", *overrides], env, log)
        total_s = time.perf_counter() - start
        metrics = json.loads((OUT / "metrics" / f"{name}.json").read_text())
        summary = OUT / "models" / name / "summary.json"  # written by `medpipe train`
        epochs = json.loads(summary.read_text()).get("epochs") if summary.is_file() else None
        rows.append((name, metrics, train_s, total_s, epochs))
        (OUT / f"{name}.summary.json").write_text(
            json.dumps({"metrics": metrics, "train_s": train_s, "total_s": total_s}, indent=2)
        )

    print(
        f"\nCPU, {threads} thread(s), budget {args.budget_min:g} min per experiment "
        "(train + evaluate). Dice/IoU at each image's original size."
    )
    print(
        "| experiment | epochs | train + eval (s) | Dice, images with foreground | Dice, all "
        "images | IoU, all | empty-mask specificity | test images (foreground / empty) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, m, _train_s, total_s, epochs in rows:
        print(
            f"| {name} | {epochs or 'n/a'} | {total_s:.0f} | {fmt(m.get('dice_positive'))} | "
            f"{fmt(m.get('dice'))} | {fmt(m.get('iou'))} | {fmt(m.get('empty_specificity'))} | "
            f"{m.get('n_positive')} / {m.get('n_empty')} |"
        )
    print("| Buda et al. 2019 (110 patients) | | | 0.82 | | | | |")
    lgg = next((m for n, m, *_ in rows if n == "lgg_unet"), None)
    if lgg is not None and lgg.get("dice_positive") is not None:
        met = lgg["dice_positive"] >= 0.70
        print(f"\nLGG U-Net target (Dice on tumour slices >= 0.70): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
