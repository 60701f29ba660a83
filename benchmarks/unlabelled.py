"""Benchmark: learning from unlabelled images (issue 18). (a) Self-supervised pretraining on
the target's unlabelled pool against supervised pretraining and against none, at a few labels
per class; (b) a mixed source (digits plus unrelated Fashion-MNIST) into the digits target,
with and without instance weighting.

    python benchmarks/unlabelled.py                     # the full grid (hours on 2 CPU cores)
    python benchmarks/unlabelled.py --experiments digits mixed --seeds 0 --labels 10 \\
        --pretrain-epochs 1 --ssl-epochs 1 --transfer-epochs 2 --set transfer.min_steps=0

Experiments (a), arms of each:
- ``digits``: params.yaml as it is (mnist5k -> uci-digits). ``none``: the scratch strategy;
  ``supervised``: pretrain.objective supervised on mnist5k; ``simclr``, ``byol``
  (``--methods``): that objective on ``pretrain.images: target`` (the target's train split and
  unlabelled pool; never its val or test split).
- ``fashion``: target Fashion-MNIST (``data.target.limit``: ``--fashion-limit``, 3000 as in the
  ``pretrained`` profile; 32 px, 1 channel, resnet10t, mean/std 0.5 as params.yaml).
  ``supervised`` pretrains on a labelled ImageFolder of ``--source-images`` other Fashion-MNIST
  images: stratified, seeded, and none of them among the target's subsample (reproduced with
  ``tasks.data.splits.subsample`` and ``data.split_seed``), so no target test image is a
  source image. SSL arms as for digits; with ``--source-ssl`` also ``simclr-source``: simclr
  on that folder with its labels ignored (``pretrain.images: source``).
Each pretrained arm is transferred with ``--strategies`` (linear_probe and full); ``none``
trains scratch once per cell. Every candidate's test accuracy is recorded, and the candidate
evaluate selects on val (the one the pipeline would register), the last kNN monitor accuracy
and the pretraining seconds. Pretraining runs once per (experiment, arm, seed) and its model
is copied into the other label counts' runs; label counts run largest first, so the kNN
monitor (its bank is the labelled train split) is measured with the most labels.

(b) ``mixed``: an ImageFolder of mnist5k (classes ``digit-0`` .. ``digit-9``) plus as many
Fashion-MNIST images (their class names), supervised pretraining on it, then ``multitask``
with ``transfer.instance_weighting`` none (``uniform``) and domain_classifier (``weighted``)
at ``--mixed-labels``; the weights' share and mean on the fashion and digit parts, ESS
fraction and the domain classifier's AUC, from reports/transfer/<candidate>.json.

Stages run in-process (no Prefect, no DVC), MLflow in the work folder, evaluate's forgetting
probe off (``--set evaluate.forgetting=true`` turns it on). Writes
``benchmarks/results/unlabelled.{json,md}`` after every run (a stopped grid leaves its table)
and prints the summary JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.transfer_strategies import candidate_result  # noqa: E402 (after sys.path)

EXPERIMENTS = ("digits", "fashion", "mixed")
METHODS = ("simclr", "byol")
DIGIT_FOLDERS = tuple(f"digit-{d}" for d in range(10))
MIXED_ARMS = {"uniform": "none", "weighted": "domain_classifier"}


# -- source folders ---------------------------------------------------------------------------


def disjoint_subsample(labels: np.ndarray, exclude: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of a stratified, seeded subsample of about ``n`` items of ``labels``, none of
    them in ``exclude`` (the target's images, so a source never holds a target test image)."""
    rest = np.setdiff1d(np.arange(len(labels)), exclude)
    if n > len(rest):
        raise SystemExit(f"--source-images {n}: only {len(rest)} images are outside the target")
    from tasks.data.splits import subsample

    return rest[subsample(labels[rest], n, seed)]


def _write_folder(root: Path, parts: list[tuple[np.ndarray, np.ndarray, tuple[str, ...]]]):
    """An ImageFolder (one PNG per image, a subfolder per class), published by rename."""
    from PIL import Image

    if root.is_dir():
        return root
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for images, labels, classes in parts:
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = partial / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    partial.rename(root)
    return root


def fashion_source(args) -> Path:
    """``--source-images`` labelled Fashion-MNIST images outside the fashion target's subsample."""
    from tasks.data.builtins import load_builtin
    from tasks.data.splits import subsample

    seed = args.base.data.split_seed
    root = args.work / "folders" / f"fashion-n{args.source_images}-l{args.fashion_limit}-s{seed}"
    if root.is_dir():
        return root
    raw = load_builtin("fashion-mnist")
    target = subsample(raw.labels, args.fashion_limit, seed)  # what prepare keeps as the target
    keep = disjoint_subsample(raw.labels, target, args.source_images, seed)
    return _write_folder(root, [(raw.images[keep], raw.labels[keep], raw.classes)])


def mixed_source(args) -> Path:
    """mnist5k (as ``digit-N``) plus as many Fashion-MNIST images (stratified, seeded)."""
    from tasks.data.builtins import load_builtin
    from tasks.data.splits import subsample

    seed = args.base.data.split_seed
    root = args.work / "folders" / f"mixed-s{seed}"
    if root.is_dir():
        return root
    digits = load_builtin("mnist5k")
    fashion = load_builtin("fashion-mnist")
    keep = subsample(fashion.labels, len(digits.labels), seed)
    return _write_folder(
        root,
        [
            (digits.images, digits.labels, DIGIT_FOLDERS),
            (fashion.images[keep], fashion.labels[keep], fashion.classes),
        ],
    )


# -- one run ----------------------------------------------------------------------------------


def experiment_overrides(experiment: str, args) -> list[str]:
    if experiment == "digits":
        return []
    if experiment == "mixed":
        return [f"data.source.path={mixed_source(args)}"]
    from tasks.data.builtins import FASHION_MNIST_CLASSES

    return [
        "data.target.builtin=fashion-mnist",
        f"data.target.limit={args.fashion_limit}",
        f"data.source.path={fashion_source(args)}",
        # the target's class order, so the supervised source keeps its head (keep_head)
        f"data.source.classes=[{','.join(FASHION_MNIST_CLASSES)}]",
        "registry.model_name=tlp-fashion",
    ]


def arm_overrides(arm: str, args) -> list[str]:
    strategies = ",".join(args.strategies)
    if arm == "none":
        return ["transfer.strategies=[scratch]"]
    if arm in MIXED_ARMS:  # supervised pretraining on the mixed source
        return [
            "transfer.strategies=[multitask]",
            f"transfer.instance_weighting={MIXED_ARMS[arm]}",
            *_epochs("pretrain", args.pretrain_epochs, args),
        ]
    if arm == "supervised":
        return [
            f"transfer.strategies=[{strategies}]",
            *_epochs("pretrain", args.pretrain_epochs, args),
        ]
    method, _, images = arm.partition("-")
    return [
        f"pretrain.objective={method}",
        f"pretrain.images={images or 'target'}",
        f"transfer.strategies=[{strategies}]",
        *_epochs("pretrain", args.ssl_epochs, args),
    ]


def _epochs(section: str, epochs: int | None, args) -> list[str]:
    """``section.epochs``, with its warm-up turned off when the epochs would not exceed it."""
    if epochs is None:
        return []
    warmup = getattr(args.base, section).warmup_epochs
    return [f"{section}.epochs={epochs}", *([f"{section}.warmup_epochs=0"] * (warmup >= epochs))]


def pretrain_key(arm: str) -> str | None:
    """The pretraining an arm transfers from (None: it trains from scratch)."""
    if arm == "none":
        return None
    return "supervised" if arm in MIXED_ARMS else arm


def _params(experiment: str, arm: str, labels: int, seed: int, args):
    from tasks.core.params import resolve_params

    overrides = [
        *experiment_overrides(experiment, args),
        f"base.seed={seed}",
        f"storage.tracking_uri=sqlite:///{args.work}/mlflow.db",
        f"base.experiment=bench-unlabelled-{experiment}",
        f"data.target.labels_per_class={labels}",
        "evaluate.forgetting=false",
        *_epochs("transfer", args.transfer_epochs, args),
        *arm_overrides(arm, args),
        *args.set,
    ]
    return resolve_params(ROOT / "params.yaml", args.profile, overrides)


def pretrain_record(report: dict, seconds: float, labels: int) -> dict:
    """What a pretraining brings to the table, from reports/pretrain.json: its objective,
    the last kNN monitor accuracy (its bank held ``labels`` per class), the source test
    accuracy (supervised only); and the stage's wall seconds, measured here."""
    knn = report.get("final_knn_accuracy")
    return {
        "objective": report["objective"],
        "images": report.get("images"),
        "train_images": report["train_images"],
        "epochs": report["epochs"],
        "final_train_loss": report["final_train_loss"],
        "knn_accuracy": knn,
        "monitor_labels_per_class": labels if knn is not None else None,
        "source_test_accuracy": report["source_test_accuracy"],
        "seconds": seconds,
    }


def run_arm(experiment: str, arm: str, labels: int, seed: int, args, sources: dict) -> dict:
    """prepare -> pretrain (or the cached model of this experiment, arm and seed) ->
    transfer -> evaluate, in a project folder of its own."""
    from tasks.core.context import open_context, read_candidate_reports, read_json
    from tasks.stages import evaluate as evaluation
    from tasks.stages import prepare, pretrain, transfer

    project = args.work / f"{experiment}-{arm}-l{labels}-s{seed}"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    ctx = open_context(project, _params(experiment, arm, labels, seed, args))
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    prepare.run(ctx)
    seconds["prepare"] = time.perf_counter() - started
    record = None
    key = pretrain_key(arm)
    if key is not None:
        started = time.perf_counter()
        cached = sources.get((experiment, key, seed))
        if cached is None:
            pretrain.run(ctx)
            spent = time.perf_counter() - started
            cached = (
                ctx.layout.source_model,
                pretrain_record(read_json(ctx.layout.pretrain_report), spent, labels),
            )
            sources[(experiment, key, seed)] = cached
        else:
            shutil.copytree(cached[0], ctx.layout.source_model)
        seconds["pretrain"] = time.perf_counter() - started
        record = {**cached[1], "reused": cached[0] != ctx.layout.source_model}
    started = time.perf_counter()
    trained = transfer.run(ctx)
    seconds["transfer"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluation.run(ctx)
    seconds["evaluate"] = time.perf_counter() - started
    # every weighted candidate's report holds the same summary (deterministic weights)
    reports = read_candidate_reports(ctx.layout, trained).values()
    weights = next((r["instance_weights"] for r in reports if "instance_weights" in r), None)
    return {
        "experiment": experiment,
        "arm": arm,
        "labels_per_class": labels,
        "seed": seed,
        "candidates": {
            name: candidate_result(m, trained[name]) for name, m in metrics["candidates"].items()
        },
        "selected": metrics["best"],
        "selected_on": metrics["selected_on"],
        "pretrain": record,
        "instance_weights": weight_parts(weights) if weights else None,
        "seconds": seconds,
    }


def weight_parts(summary: dict) -> dict:
    """The weights on the fashion and the digit part of the mixed source (classes
    ``digit-N`` are digits): each part's share of the total weight, its mean weight and its
    share of the images; with the ESS fraction and the domain classifier's AUC."""
    parts: dict[str, dict[str, float]] = {}
    for name, row in summary.get("by_class", {}).items():
        part = parts.setdefault("digits" if name in DIGIT_FOLDERS else "fashion", {})
        part["weight_share"] = part.get("weight_share", 0.0) + row["weight_share"]
        part["images"] = part.get("images", 0) + row["images"]
        part["weight_sum"] = part.get("weight_sum", 0.0) + row["mean_weight"] * row["images"]
    total = sum(p["images"] for p in parts.values())
    out = {"ess_fraction": summary["ess_fraction"], "domain_auc": summary["domain_auc"]}
    for name, part in parts.items():
        out[f"{name}_weight_share"] = part["weight_share"]
        out[f"{name}_mean_weight"] = part["weight_sum"] / part["images"]
        out[f"{name}_image_share"] = part["images"] / total
    return out


# -- summary ----------------------------------------------------------------------------------


def _mean_std(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def _accuracy(run: dict | None, candidate: str) -> float | None:
    """A run's test accuracy of ``candidate`` ("selected": the one evaluate picked on val)."""
    if run is None:
        return None
    name = run["selected"] if candidate == "selected" else candidate
    row = run["candidates"].get(name)
    return None if row is None else row["accuracy"]


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarise(runs: list[dict]) -> dict:
    """Mean ± std over seeds per (experiment, labels, arm). Differences are paired by seed:
    ``gain`` = accuracy - the same cell's scratch, ``to_supervised`` = accuracy - the same
    cell's supervised arm (its selected candidate for ``selected``, else the same strategy);
    for the mixed source, ``weighted_minus_uniform``."""
    cells = {(r["experiment"], r["labels_per_class"], r["seed"], r["arm"]): r for r in runs}
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["experiment"], run["labels_per_class"], run["arm"]), []).append(run)
    out: dict = {}
    for (experiment, labels, arm), members in groups.items():
        row: dict = {}
        names = ["selected", *dict.fromkeys(n for r in members for n in r["candidates"])]
        for name in names:
            acc, gain, to_sup = [], [], []
            for run in members:
                cell = (experiment, labels, run["seed"])
                mine = _accuracy(run, name)
                acc.append(mine)
                gain.append(_difference(mine, _accuracy(cells.get((*cell, "none")), "scratch")))
                to_sup.append(_difference(mine, _accuracy(cells.get((*cell, "supervised")), name)))
                if arm == "weighted":
                    uniform = _accuracy(cells.get((*cell, "uniform")), name)
                    row.setdefault("weighted_minus_uniform", {}).setdefault(name, []).append(
                        _difference(mine, uniform)
                    )
            row[name] = {
                "accuracy": _mean_std(acc),
                "gain": _mean_std(gain),
                "to_supervised": _mean_std(to_sup),
            }
        if "weighted_minus_uniform" in row:
            row["weighted_minus_uniform"] = {
                n: _mean_std(v) for n, v in row["weighted_minus_uniform"].items()
            }
        row["picked"] = [r["selected"] for r in sorted(members, key=lambda r: r["seed"])]
        # each pretraining once: where it ran, not where its model was copied to
        pre = [r["pretrain"] for r in members if r["pretrain"] and not r["pretrain"]["reused"]]
        row["knn_accuracy"] = _mean_std([p["knn_accuracy"] for p in pre])
        row["pretrain_seconds"] = _mean_std([p["seconds"] for p in pre])
        weights = [r["instance_weights"] for r in members if r["instance_weights"]]
        if weights:
            row["instance_weights"] = {
                k: _mean_std([w.get(k) for w in weights]) for k in weights[0]
            }
        out.setdefault(experiment, {}).setdefault(str(labels), {})[arm] = row
    return out


def phase_seconds(runs: list[dict]) -> dict:
    """Total seconds per experiment and phase (prepare, pretrain, transfer, evaluate)."""
    out: dict = {}
    for run in runs:
        phases = out.setdefault(run["experiment"], {})
        for phase, seconds in run["seconds"].items():
            phases[phase] = round(phases.get(phase, 0.0) + seconds, 1)
    return out


# -- tables -----------------------------------------------------------------------------------


def _fmt(stat: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat or stat["mean"] is None:
        return "-"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _labels(by_labels: dict) -> list[str]:
    return sorted(by_labels, key=int)


def markdown(summary: dict, seeds: list[int]) -> str:
    lines = [
        f"Test accuracy % (mean ± std over seeds {seeds}). gain = accuracy - scratch; "
        "vs supervised = accuracy - supervised pretraining (the same strategy, or both "
        "selected); both paired by seed. `selected` = the candidate evaluate picks on val.",
        "",
    ]
    for experiment, by_labels in summary.items():
        if experiment == "mixed":
            lines += _mixed_lines(by_labels)
            continue
        lines += [f"### {experiment}", ""]
        lines += ["| labels/class | arm | candidate | accuracy | gain | vs supervised |"]
        lines += ["|---|---|---|---|---|---|"]
        for labels in _labels(by_labels):
            for arm, row in by_labels[labels].items():
                for name, stat in row.items():
                    if not isinstance(stat, dict) or "gain" not in stat:
                        continue
                    if arm == "none" and name == "scratch":
                        continue  # scratch is its own selected candidate
                    shown = f"selected ({', '.join(row['picked'])})" if name == "selected" else name
                    lines.append(
                        f"| {labels} | {arm} | {shown} | {_fmt(stat['accuracy'])} | "
                        f"{_fmt(stat['gain'])} | {_fmt(stat['to_supervised'])} |"
                    )
        lines += [
            "",
            "Pretraining, once per arm and seed (its model reused at the other label counts); "
            "the kNN monitor's bank is the target's labelled train split at the labels shown.",
            "",
            "| labels/class | arm | last kNN monitor % | pretraining s |",
            "|---|---|---|---|",
        ]
        for labels in _labels(by_labels):
            for arm, row in by_labels[labels].items():
                if row["pretrain_seconds"]["n"]:
                    lines.append(
                        f"| {labels} | {arm} | {_fmt(row['knn_accuracy'])} | "
                        f"{_fmt(row['pretrain_seconds'], 1.0, 0)} |"
                    )
        lines.append("")
    return "\n".join(lines)


def _mixed_lines(by_labels: dict) -> list[str]:
    lines = [
        "### mixed source (mnist5k + Fashion-MNIST) into digits, multitask",
        "",
        "| labels/class | uniform | weighted | weighted - uniform | fashion: weight share "
        "(image share) | mean weight fashion / digits | ESS fraction | domain AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for labels in _labels(by_labels):
        row = by_labels[labels]
        uniform, weighted = row.get("uniform", {}), row.get("weighted", {})
        w = weighted.get("instance_weights", {})
        lines.append(
            f"| {labels} | {_fmt(uniform.get('multitask', {}).get('accuracy'))} | "
            f"{_fmt(weighted.get('multitask', {}).get('accuracy'))} | "
            f"{_fmt(weighted.get('weighted_minus_uniform', {}).get('multitask'))} | "
            f"{_fmt(w.get('fashion_weight_share'))} ({_fmt(w.get('fashion_image_share'))}) | "
            f"{_fmt(w.get('fashion_mean_weight'), 1.0, 2)} / "
            f"{_fmt(w.get('digits_mean_weight'), 1.0, 2)} | "
            f"{_fmt(w.get('ess_fraction'), 1.0, 2)} | {_fmt(w.get('domain_auc'), 1.0, 3)} |"
        )
    return [*lines, ""]


# -- main -------------------------------------------------------------------------------------


def plan(args) -> list[tuple[str, str, int, int]]:
    """Every run, in order: label counts largest first (the kNN monitor's bank is the
    labelled split the pretraining meets first), scratch then the pretrained arms."""
    arms = ["none", "supervised", *args.methods]
    runs = []
    for experiment in args.experiments:
        labels = args.mixed_labels if experiment == "mixed" else args.labels
        for seed in args.seeds:
            for count in sorted(labels, reverse=True):
                if experiment == "mixed":
                    names = list(MIXED_ARMS)
                else:
                    names = arms + ["simclr-source"] * (experiment == "fashion" and args.source_ssl)
                runs += [(experiment, arm, count, seed) for arm in names]
    return runs


def main(argv: list[str] | None = None) -> dict:
    from tasks.core.params import resolve_params

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--labels", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--mixed-labels", nargs="+", type=int, default=[10])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--strategies", nargs="+", default=["linear_probe", "full"])
    parser.add_argument("--source-ssl", action="store_true", help="fashion: simclr-source arm")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="supervised")
    parser.add_argument("--ssl-epochs", type=int, default=None, help="default: pretrain.epochs")
    parser.add_argument("--transfer-epochs", type=int, default=None)
    parser.add_argument("--fashion-limit", type=int, default=3000)
    parser.add_argument("--source-images", type=int, default=5000, help="fashion source")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--work", type=Path, default=ROOT / ".tlp" / "bench-unlabelled", help="git-ignored"
    )
    args = parser.parse_args(argv)
    args.out, args.work = args.out.resolve(), args.work.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    args.base = resolve_params(ROOT / "params.yaml", args.profile, args.set)
    command = "python benchmarks/unlabelled.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    todo = plan(args)
    started = time.perf_counter()
    runs: list[dict] = []
    sources: dict = {}
    for experiment, arm, labels, seed in todo:
        runs.append(run_arm(experiment, arm, labels, seed, args, sources))
        accuracy = {n: round(m["accuracy"], 4) for n, m in runs[-1]["candidates"].items()}
        print(
            f"{experiment} {arm} labels={labels} seed={seed}: {accuracy}",
            file=sys.stderr,
            flush=True,
        )
        result = write(args, command.strip(), runs, len(todo), time.perf_counter() - started)
    print(json.dumps({k: result[k] for k in ("command", "seconds", "phase_seconds", "summary")}))
    return result


def write(args, command: str, runs: list[dict], total: int, seconds: float) -> dict:
    summary = summarise(runs)
    seeds = sorted({r["seed"] for r in runs})
    result = {
        "command": command,
        "grid": {
            "experiments": args.experiments,
            "seeds": args.seeds,
            "labels_per_class": args.labels,
            "mixed_labels_per_class": args.mixed_labels,
            "methods": args.methods,
            "strategies": args.strategies,
            "source_ssl": args.source_ssl,
            "pretrain_epochs": args.pretrain_epochs or args.base.pretrain.epochs,
            "ssl_epochs": args.ssl_epochs or args.base.pretrain.epochs,
            "transfer_epochs": args.transfer_epochs or args.base.transfer.epochs,
            "fashion_limit": args.fashion_limit,
            "source_images": args.source_images,
            "profile": args.profile,
            "overrides": args.set,
        },
        "complete": len(runs) == total,
        "runs_done": f"{len(runs)} of {total}",
        "seconds": round(seconds, 1),
        "phase_seconds": phase_seconds(runs),
        "summary": summary,
        "runs": runs,
    }
    (args.out / "unlabelled.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "unlabelled.md").write_text(markdown(summary, seeds) + "\n")
    return result


if __name__ == "__main__":
    main()
