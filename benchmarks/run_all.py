"""``make bench``: every benchmark, then REPORT.md (with plots) logged to MLflow.

    python benchmarks/run_all.py                 # quick settings -> benchmarks/results/quick/
    python benchmarks/run_all.py --full          # full sizes -> benchmarks/results/
    python benchmarks/run_all.py --only scaling  # one or more benchmarks, then the report

Each benchmark runs in its own process and writes NAME.json naming the exact command; the
report is rebuilt from whatever results are in that folder. Quick results go to their own
(git-ignored) folder so that a quick check never overwrites the full-size figures.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"
FULL_RESULTS = HERE / "results"
QUICK_RESULTS = FULL_RESULTS / "quick"

QUICK = {
    "startup": ["--rounds", "7"],
    "training_throughput": ["--rounds", "4", "--images", "1024", "--epochs", "1"],
    "orchestration": ["--profiles", "smoke"],
    "shards": ["--limit", "3000"],
    "scaling": ["--factors", "1", "4", "12", "--base-images", "500", "--image-size", "16"],
    "data_efficiency": [
        *("--labels", "1", "5", "all", "--seeds", "0"),
        *("--strategies", "scratch", "linear_probe", "full"),
        *("--pretrain-epochs", "2", "--transfer-epochs", "5", "--set", "base.threads=1"),
    ],
    "pretrained_transfer": [
        *("--labels", "10", "--seeds", "0", "--sources", "imagenet", "random"),
        *("--strategies", "scratch", "linear_probe", "full"),
        *("--control-strategies", "linear_probe"),
        *("--set", "transfer.epochs=5", "--set", "transfer.min_steps=40"),
    ],
    "serving": ["--quick"],
    "serving_misuse": [],  # a smoke model: 20 bad requests, 200 good ones
    "unlabelled": [
        *("--experiments", "digits", "mixed", "--seeds", "0", "--labels", "10"),
        *("--methods", "simclr", "--pretrain-epochs", "1", "--ssl-epochs", "1"),
        *("--transfer-epochs", "3", "--set", "transfer.min_steps=20"),
    ],
}
FULL = {
    "startup": ["--rounds", "15"],
    "training_throughput": ["--rounds", "8", "--images", "2048", "--epochs", "2"],
    "orchestration": ["--profiles", "smoke", "default"],
    "shards": [],  # all 70,000 Fashion-MNIST images
    "scaling": ["--factors", "1", "4", "12", "--base-images", "5000", "--epochs", "1"],
    "data_efficiency": [],  # every strategy, labels 1 2 5 10 20 all, seeds 0 1 2, params.yaml
    "pretrained_transfer": [],  # 6 candidates + 2 control sources, labels 1 5 10 50, 3 seeds
    "serving": [],  # the default experiment, 200 requests per server, 3 batch rounds
    "serving_misuse": [],
    "unlabelled": [],  # digits, fashion, mixed; simclr + byol; labels 1 10; 3 seeds
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full sizes (hours on 2 CPU cores)")
    parser.add_argument("--only", nargs="+", choices=list(QUICK), default=list(QUICK))
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args(argv)
    settings, results = (FULL, FULL_RESULTS) if args.full else (QUICK, QUICK_RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        argv_ = [sys.executable, str(HERE / f"{name}.py"), *settings[name], "--out", str(results)]
        print("+ " + " ".join(argv_[1:]), flush=True)
        subprocess.run(argv_, check=True, stdout=subprocess.DEVNULL)
    report = [sys.executable, str(HERE / "report.py"), "--results", str(results)]
    subprocess.run(report + (["--no-mlflow"] if args.no_mlflow else []), check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
