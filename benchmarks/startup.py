"""Benchmark: wall time of ``tlp --help`` against a bare ``python -c pass``, alternating.

python benchmarks/startup.py [--rounds 15]

Prints one JSON line: both medians and their ratio (``tlp --help`` / ``python -c pass``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TLP = Path(sys.executable).parent / "tlp"


def _seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    runs: dict[str, list[float]] = {"tlp --help": [], "python -c pass": []}
    for _ in range(args.rounds):
        runs["tlp --help"].append(_seconds([str(TLP), "--help"]))
        runs["python -c pass"].append(_seconds([sys.executable, "-c", "pass"]))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "command": "python benchmarks/startup.py " + " ".join(argv or sys.argv[1:]),
        "median_seconds": medians,
        "ratio": round(medians["tlp --help"] / medians["python -c pass"], 2),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_seconds": medians, "ratio": result["ratio"], "rounds": args.rounds}))
    return result


if __name__ == "__main__":
    main()
