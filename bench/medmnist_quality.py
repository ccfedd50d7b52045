"""MedMNIST quality bar: train + evaluate the default experiments on CPU and print the table.

    MEDPIPE_DATA_MIRROR=../shared/data uv run python bench/medmnist_quality.py [--threads 2]

Runs `medpipe fetch/train/evaluate` as a user would (subprocesses, the real CLI), with outputs
under bench/results/ so DVC's outputs are untouched, and prints test ACC/AUC and wall time next to
the MedMNIST v2 paper's ResNet-18 (28) figures. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# MedMNIST v2 (Yang et al., Sci Data 2023), Table 3, ResNet-18 (28): (ACC, AUC)
PAPER = {"pneumonia_resnet18": (0.854, 0.944), "breast_resnet18": (0.863, 0.901)}
EXPERIMENTS = {
    "pneumonia_resnet18": ["experiment=pneumonia_resnet18"],
    "breast_resnet18": ["experiment=breast_resnet18"],
}


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--only", action="append", choices=sorted(EXPERIMENTS), help="subset to run"
    )
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    out = Path("bench/results/medmnist")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    common = [
        f"paths.models={out}/models",
        f"paths.metrics={out}/metrics",
        f"paths.reports={out}/reports",
        f"paths.logs={out}/logs",
        "trainer.accelerator=cpu",
        *args.overrides,
    ]
    rows = []
    for name in args.only or EXPERIMENTS:
        overrides = EXPERIMENTS[name] + common
        run([sys.executable, "-m", "medpipe.cli", "fetch", *overrides], env)
        start = time.perf_counter()
        run([sys.executable, "-m", "medpipe.cli", "train", *overrides], env)
        train_s = time.perf_counter() - start
        run([sys.executable, "-m", "medpipe.cli", "evaluate", *overrides], env)
        metrics = json.loads((out / "metrics" / f"{name}.json").read_text())
        rows.append((name, metrics["accuracy"], metrics["roc_auc"], train_s, *PAPER[name]))

    print(
        "\n| experiment | test ACC | test AUC | train wall (s) | paper ACC | paper AUC | bar met |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, acc, auc, secs, pacc, pauc in rows:
        ok = acc >= pacc and auc >= pauc and secs <= 600
        print(
            f"| {name} | {acc:.3f} | {auc:.3f} | {secs:.0f} | {pacc:.3f} | {pauc:.3f} | {'yes' if ok else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
