"""benchmarks/results/*.json -> benchmarks/results/REPORT.md with PNG plots, logged to MLflow.

    python benchmarks/report.py [--no-mlflow] [--results DIR]

Reads whatever results are there (each JSON names the command that produced it), so one
benchmark can be rerun alone and the report rebuilt. The MLflow run goes to the experiment
``benchmarks`` of the project's store (``storage.tracking_uri`` in params.yaml).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
EXPERIMENT = "benchmarks"


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_section(r: dict, out: Path) -> tuple[list[str], dict]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(r["rounds"]))
    ax.plot(xs, [x["bare"] for x in r["rounds"]], "o-", label="bare PyTorch + timm")
    ax.plot(xs, [x["project"] for x in r["rounds"]], "s-", label="tasks.modeling.training.fit")
    ax.set_xlabel("round (alternating)")
    ax.set_ylabel("images / s")
    ax.set_title(f"Training throughput, {r['arch']}, batch {r['batch_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "training_throughput.png", dpi=110)
    plt.close(fig)
    verdict = "meets" if r["ratio"] >= 0.97 else "misses"
    lines = [
        "## Training throughput",
        "",
        f"`{r['command']}`",
        "",
        f"{r['arch']}, batch {r['batch_size']}, {r['threads']} threads, {r['images']} images in "
        f"memory, {r['epochs_per_measurement']} epoch(s) per measurement, {len(r['rounds'])} "
        "alternating rounds (who goes first alternates too).",
        "",
        "| loop | images/s (median) |",
        "|---|---|",
        f"| bare PyTorch + timm | {r['bare_images_per_second']:.1f} |",
        f"| project (`tasks.modeling.training.fit`) | {r['project_images_per_second']:.1f} |",
        "",
        f"Ratio project / bare: **{r['ratio']:.3f}** (geometric mean of per-round ratios; "
        f"range {r['ratio_min']:.3f} to {r['ratio_max']:.3f}); {verdict} the 0.97 target."
        + (
            " Running second in a round changed a loop's speed by "
            f"{r['second_over_first_median']:.2f}x (median, second / first); the order "
            "alternates, so over an even number of rounds each loop has each position equally."
            if "second_over_first_median" in r
            else ""
        ),
        "",
        "![throughput](training_throughput.png)",
        "",
    ]
    return lines, {"throughput_ratio": r["ratio"]}


def _breakdown_lines(profiles: dict) -> list[str]:
    """Where the overhead went, for the first run and (when measured) a changed rerun."""
    rows = []
    for name, p in profiles.items():
        runs = [("first run", p)]
        if p.get("changed_run"):
            runs.append((f"rerun, `--set {p['changed_run']['change']}`", p["changed_run"]))
        if p.get("running_server"):
            runs.append(("first run, a running Prefect server", p["running_server"]))
        for label, run in runs:
            wall = run.get("wall_seconds", run.get("first_run_seconds"))
            inside = run.get("orchestration_inside_flow") or {}
            if "outside_flow_seconds" not in run:
                continue
            parts = ", ".join(f"{k} {v:.1f}" for k, v in inside.items())
            outside = f"{run['outside_flow_seconds']:.1f}"
            if run.get("before_flow_seconds") is not None:
                outside += f" ({run['before_flow_seconds']:.1f} before the flow)"
            rows.append(
                f"| {name} | {label} | {wall:.1f} | {run['stage_compute_seconds']:.1f} | "
                f"{run['overhead_percent']:.1f}% | {outside} | {parts} |"
            )
    if not rows:
        return []
    return [
        "Where the overhead goes: outside the flow is the interpreter, the imports, the "
        "ephemeral Prefect API's start and stop; inside, the flow's own phases "
        "(`orchestration_seconds` in reports/summary.json), in seconds.",
        "",
        "| profile | run | wall (s) | compute (s) | overhead % | outside the flow (s) | "
        "inside the flow (s) |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def orchestration_section(r: dict, out: Path) -> tuple[list[str], dict]:
    plt = _plt()
    profiles = r["profiles"]
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    names = list(profiles)
    compute = [profiles[n]["stage_compute_seconds"] for n in names]
    overhead = [profiles[n]["overhead_seconds"] for n in names]
    ax.barh(names, compute, label="stages' own compute")
    ax.barh(names, overhead, left=compute, label="orchestration (everything else)")
    ax.set_xlabel("seconds, first `tlp run`")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "orchestration.png", dpi=110)
    plt.close(fig)
    s = r["startup"]
    lines = [
        "## Orchestration overhead, cached rerun, start-up",
        "",
        f"`{r['command']}` (each `tlp` a fresh process in a fresh git + DVC project; "
        "an ephemeral Prefect API per run, as by default)",
        "",
        "| profile | first run (s) | stages' compute (s) | overhead (s) | overhead % | "
        "no-change rerun (s) | rerun / first | rerun through the flow, `--force-flow` (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    metrics = {"orchestration_help_seconds": s["median_seconds"]}
    for name, p in profiles.items():
        lines.append(
            f"| {name} | {p['first_run_seconds']:.1f} | {p['stage_compute_seconds']:.1f} | "
            f"{p['overhead_seconds']:.1f} | {p['overhead_percent']:.1f}% | "
            f"{p['cached_rerun_seconds']:.2f} | {100 * p['cached_rerun_fraction']:.1f}% | "
            f"{p['forced_flow_rerun_seconds']:.1f} |"
        )
        metrics[f"{name}_overhead_percent"] = p["overhead_percent"]
        if p.get("running_server"):
            metrics[f"{name}_served_overhead_percent"] = p["running_server"]["overhead_percent"]
        metrics[f"{name}_cached_rerun_fraction"] = p["cached_rerun_fraction"]
        if p.get("changed_run"):
            metrics[f"{name}_changed_run_overhead_percent"] = p["changed_run"]["overhead_percent"]
    lines += ["", *_breakdown_lines(profiles), ""]
    lines += [
        "",
        "Stages' compute is the time inside each stage function (`stage_compute_seconds` in "
        "reports/summary.json); overhead is the rest of the process's wall time: interpreter "
        "and imports, the Prefect API, MLflow runs, DVC status/commit/push, the promotion gate.",
        "",
        *(
            [
                "The default profile was not measured in this run: "
                "`python benchmarks/orchestration.py --profiles default` measures it "
                "(`make bench FULL=1` includes it).",
                "",
            ]
            if "default" not in profiles
            else []
        ),
        f"`tlp --help` during this benchmark: {s['median_seconds']:.3f} s (median of "
        f"{len(s['runs'])}; see Start-up for it against a bare interpreter).",
        "",
        *_first_flow_lines(r.get("first_flow")),
        "",
        "![orchestration](orchestration.png)",
        "",
    ]
    return lines, metrics


def _first_flow_lines(f: dict | None) -> list[str]:
    if not f:
        return []
    med = f["median_seconds"]
    return [
        "From a fresh process to the end of its first (empty) Prefect flow, with the imports "
        f"of `tlp run` (median of {len(f['runs']['prestart'])} alternating rounds): "
        f"{med['no_prestart']:.2f} s when Prefect starts its ephemeral API as the flow needs "
        f"it (`TLP_PREFECT_PRESTART=0`), {med['prestart']:.2f} s with tlp's temporary API "
        "launched first, during the imports, without loading the server's code "
        f"(flows/prefect_api.py; saves {f['saved_seconds']:.2f} s).",
    ]


def scaling_section(r: dict, out: Path) -> tuple[list[str], dict]:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    metrics = {}
    for mode, by in r["growth"].items():
        factors = [int(k[1:]) for k in by]
        axes[0].plot(factors, [g["time"] for g in by.values()], "o-", label=mode)
        axes[1].plot(factors, [g["peak_rss"] for g in by.values()], "o-", label=mode)
        last = list(by)[-1]
        metrics[f"scaling_{mode}_time_growth_{last}"] = by[last]["time"]
        metrics[f"scaling_{mode}_rss_growth_{last}"] = by[last]["peak_rss"]
    axes[0].plot(factors, factors, "k:", label="linear")
    axes[0].set_title("pretrain wall time (x of x1)")
    axes[1].set_title("peak RSS (x of x1)")
    for ax in axes:
        ax.set_xlabel("source size (x mnist5k)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)
    lines = [
        "## Scaling of the pretrain stage",
        "",
        f"`{r['command']}` (x1 = {r['base_images']} mnist5k digits, {r['image_size']}x"
        f"{r['image_size']} inputs, {r['epochs']} epoch(s), {r['threads']} threads; each "
        "measurement a fresh process running `tasks.stages.pretrain.run`)",
        "",
        "| mode | size | train images | seconds | peak RSS (MiB) | time growth | RSS growth |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, by in r["runs"].items():
        for size, run in by.items():
            g = r["growth"][mode][size]
            lines.append(
                f"| {mode} | {size} | {run['train_images']} | {run['seconds']:.1f} | "
                f"{run['peak_rss_bytes'] / 2**20:.0f} | {g['time']:.2f} | {g['peak_rss']:.2f} |"
            )
    lines += [
        "",
        "`stream` is the stage as it is: the source is streamed from its shards row group by "
        "row group and decoded once (`tasks.data.streaming`); `memory` swaps in whole-split "
        "`load_tensors`, for comparison. Same results for a seed either way "
        "(tests/unit/test_streaming.py).",
        "",
        f"Read the RSS column with its scale in mind: whole-split loading holds "
        f"{4 * r['image_size'] ** 2} bytes per {r['image_size']}x{r['image_size']} grey input "
        "(and the decoded images besides), against about 1.2 GiB of interpreter, torch, timm "
        "and MLflow. Streaming keeps it flat: the decoded cache is a file read with positioned "
        "reads (page cache, not the process's memory), and a few encoded row groups at a time."
        + (f" Verdict: {r['verdict']}." if "verdict" in r else ""),
        "",
        "![scaling](scaling.png)",
        "",
    ]
    return lines, metrics


def data_efficiency_section(r: dict, out: Path) -> tuple[list[str], dict]:
    from benchmarks.data_efficiency import markdown

    g = r["grid"]
    lines = [
        "## Data efficiency",
        "",
        f"`{r['command']}`",
        "",
        f"Experiment `{g['experiment']}` (profile {g['profile']}), strategies "
        f"{', '.join(g['strategies'])}; labels per class "
        f"{', '.join(map(str, g['labels_per_class']))}"
        f"; seeds {g['seeds']}; pretrain epochs {g['pretrain_epochs'] or 'as params.yaml'}, "
        f"transfer epochs {g['transfer_epochs'] or 'as params.yaml'}, overrides "
        f"{g['overrides'] or 'none'}"
        + ("" if r.get("combined_from") else f"; {r['seconds'] / 60:.0f} min")
        + ". `all` = every labelled target train image (outside the fixed test and validation "
        "splits).",
        *_combined_lines(r.get("combined_from")),
        "",
        f"Grid cells done: {r.get('cells_done', 'all')}"
        + ("" if r.get("complete", True) else " (interrupted: the table shows what finished)."),
        "",
        markdown(r["summary"], sorted({run["seed"] for run in r["runs"]})),
        "![data efficiency](data_efficiency.png)",
        "",
    ]
    return lines, {}


def _combined_lines(sources: list | None) -> list[str]:
    if not sources:
        return []
    lines = ["", "The cells come from these result files (runs in separate processes):", ""]
    for source in sources:
        command = source["command"] or "the grid recorded in the file"
        lines.append(f"- `benchmarks/results/{source['file']}`: `{command}`")
    return lines


def startup_section(r: dict, out: Path) -> tuple[list[str], dict]:
    med = r["median_seconds"]
    lines = [
        "## Start-up",
        "",
        f"`{r['command']}`: `tlp --help` **{med['tlp --help']:.3f} s** against "
        f"`python -c pass` {med['python -c pass']:.3f} s "
        f"({med['tlp --help'] / med['python -c pass']:.1f}x; medians of "
        f"{len(r['runs']['tlp --help'])} alternating runs).",
        "",
    ]
    return lines, {"startup_help_seconds": med["tlp --help"]}


def pretrained_section(r: dict, out: Path) -> tuple[list[str], dict]:
    from benchmarks.transfer_strategies import markdown

    g = r["grid"]
    seconds = r.get("seconds_per_candidate", {})
    lines = [
        "## A pretrained backbone: ImageNet EfficientNet-Lite0 to Fashion-MNIST",
        "",
        f"`{r['command']}` (the last invocation; cells of earlier ones kept with `--add`, "
        "each run records its own overrides)",
        "",
        f"Profile {g['profile']}; sources {', '.join(g['sources'])}; test images per cell "
        f"{g['test_images']}. Control sources' candidates are named `source/strategy`.",
        "",
        markdown(r["summary"], sorted({run["seed"] for run in r["runs"]})),
        "Training seconds per candidate (mean over the cells run), by labels per class:",
        "",
        *(f"- {labels}: {by_name}" for labels, by_name in sorted(seconds.items())),
        "",
        "![pretrained transfer](pretrained_transfer.png)",
        "",
    ]
    return lines, {}


def serving_section(r: dict, out: Path) -> tuple[list[str], dict]:
    """benchmarks/serving.py writes its own serving.md: shown here one heading level down."""
    text = (out / "serving.md").read_text() if (out / "serving.md").is_file() else ""
    lines = [f"#{line}" if line.startswith("#") else line for line in text.splitlines()]
    rest, batch = r["rest"], r["batch"]
    values = {
        "serving_parity_max_abs_logit_diff": r["parity"]["max_abs_logit_diff"],
        "serving_rest_pyfunc_p50_ms": rest["pyfunc"]["p50_ms"],
        "serving_rest_pyfunc_p95_ms": rest["pyfunc"]["p95_ms"],
        "serving_rest_onnx_p50_ms": rest["onnx"]["p50_ms"],
        "serving_rest_onnx_p95_ms": rest["onnx"]["p95_ms"],
        "serving_batch_onnx_images_per_second": batch["onnx"]["images_per_second_median"],
        "serving_batch_pyfunc_images_per_second": batch["pyfunc"]["images_per_second_median"],
    }
    return [*lines, ""], values


def serving_misuse_section(r: dict, out: Path) -> tuple[list[str], dict]:
    """benchmarks/serving_misuse.py: each bad request's answer, then the good ones."""
    good = r["good"]
    lines = [
        "## Serving under misuse",
        "",
        f"`{r['command']}`",
        "",
        f"{r['server']} of {r['model']} on 127.0.0.1. Every bad request refused with a 4xx: "
        f"{r['all_bad_refused_4xx']}; server up after each: {r['up_after_every_bad_request']}; "
        f"the three path requests answered identically: {r['path_answers_identical']}; "
        f"answers revealing the server: {r['answers_with_leaks'] or 'none'}. Server memory "
        f"{r['rss_mb_before']:.0f} MB before, {r['rss_mb_after']:.0f} MB after.",
        "",
        "| bad request | status | seconds | up after |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {b['case']} | {b['status']} | {b['seconds']:.2f} | {b['up_after']} |" for b in r["bad"]
    ]
    values = {
        "serving_misuse_bad_refused_4xx": float(r["all_bad_refused_4xx"]),
        "serving_misuse_rss_mb_after": r["rss_mb_after"],
    }
    if good.get("n"):
        lines += [
            "",
            f"Good requests: {good['n']} answered, p50 {good['p50_ms']:.1f} ms, "
            f"p95 {good['p95_ms']:.1f} ms.",
        ]
        values |= {
            "serving_misuse_good_p50_ms": good["p50_ms"],
            "serving_misuse_good_p95_ms": good["p95_ms"],
        }
    return [*lines, ""], values


def shards_section(r: dict, out: Path) -> tuple[list[str], dict]:
    s = r["seconds"]
    lines = [
        "## A 70,000-image dataset prepared, validated and versioned",
        "",
        f"`{r['command']}`: {r['images']['target']:,} {r['target']} images as the target "
        f"({r['images']['source']:,} {r['source']} as the source), {r['steps']}.",
        "",
        "| prepare | validate | dvc commit | dvc push | total | of it DVC | files (source, "
        "target) | objects pushed | `dvc status` clean |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {s['prepare']:.1f} s | {s['validate']:.1f} s | {s['dvc_commit']:.2f} s | "
        f"{s['dvc_push']:.2f} s | {r['total_seconds']:.1f} s | {r['dvc_seconds']:.2f} s | "
        f"{r['files']['data_source']}, {r['files']['data_target']} | "
        f"{r['files']['remote_objects']} | {r['dvc_status_clean']} |",
        "",
        f"Acceptance: {r['acceptance']}.",
        "",
    ]
    return lines, {
        "shards_total_seconds": r["total_seconds"],
        "shards_dvc_seconds": r["dvc_seconds"],
    }


def throughput_shards_section(r: dict, out: Path) -> tuple[list[str], dict]:
    def secs(values: list) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    lines = [
        "## Pretraining epochs from shards against whole-split in-memory loading",
        "",
        f"`{r['command']}` ({r['train_images']} images, {r['arch']}, batch {r['batch_size']}, "
        f"{r['threads']} threads, the same order and seed for both)",
        "",
        f"- in memory: load {r['memory_load_seconds']:.2f} s, epochs "
        f"{secs(r['memory_epoch_seconds'])} s",
        f"- from shards (epoch 1 decodes into the decoded cache, later epochs read it): "
        f"epochs {secs(r['shard_epoch_seconds'])} s",
        f"- ratios: epoch 1 (against load + epoch 1) {r['epoch1_ratio']:.3f}, later epochs "
        f"{r['later_epochs_ratio']:.3f}, total {r['total_ratio']:.3f}; within 1.05x: "
        f"{r['within_1_05']}; identical weights: {r['same_weights']}",
        "",
    ]
    return lines, {"shards_epoch_ratio": r["total_ratio"]}


def unlabelled_section(r: dict, out: Path) -> tuple[list[str], dict]:
    """benchmarks/unlabelled.py: self-supervised pretraining and instance weighting."""
    from benchmarks.unlabelled import markdown

    g = r["grid"]
    lines = [
        "## Learning from unlabelled images",
        "",
        f"`{r['command']}`",
        "",
        f"Experiments {', '.join(g['experiments'])}; SSL methods {', '.join(g['methods'])} on "
        f"the target's unlabelled pool; strategies {', '.join(g['strategies'])} per pretrained "
        f"arm (scratch once per cell); labels per class {g['labels_per_class']} (mixed: "
        f"{g['mixed_labels_per_class']}); seeds {g['seeds']}; epochs: supervised pretraining "
        f"{g['pretrain_epochs']}, self-supervised {g['ssl_epochs']}, transfer "
        f"{g['transfer_epochs']}; overrides {g['overrides'] or 'none'}; runs done "
        f"{r['runs_done']}, {r['seconds'] / 60:.0f} min.",
        "",
        markdown(r["summary"], g["seeds"]),
    ]
    metrics = {}
    for experiment, by_labels in r["summary"].items():
        for labels, by_arm in by_labels.items():
            for arm, row in by_arm.items():
                key = f"unlabelled_{experiment}_l{labels}_{arm}".replace("-", "_")
                for name in ("gain", "to_supervised"):
                    if row["selected"][name]["mean"] is not None:
                        metrics[f"{key}_{name}"] = row["selected"][name]["mean"]
                diff = row.get("weighted_minus_uniform", {}).get("multitask")
                if diff and diff["mean"] is not None:
                    metrics[f"{key}_minus_uniform"] = diff["mean"]
    return lines, metrics


def candidates_section(r: dict, out: Path) -> tuple[list[str], dict]:
    """benchmarks/candidates.py: one strategy's change, and candidates on two workers."""
    rerun, workers = r["rerun_after_one_change"], r["workers"]
    own = sum(v or 0.0 for v in rerun["rerun_candidate_first_run_seconds"].values())
    lines = [
        "## Candidates as stages of their own, and on two local workers",
        "",
        f"`{r['command']}` ({r['candidates']} candidates, {r['cpu_count']} cores)",
        "",
        f"- `--set {rerun['change']}` reran {', '.join(rerun['stages_rerun'])}: "
        f"{rerun['rerun_transfer_seconds']:.1f} s of transfer stages against "
        f"{rerun['full_transfer_seconds']:.1f} s for the full transfer (ratio "
        f"{rerun['ratio']:.3f}; 1/N = {rerun['one_over_n']:.3f}); that candidate's own work "
        f"in the first run: {own:.1f} s, "
        f"overhead {rerun['overhead_seconds']:.1f} s.",
        f"- Every candidate retrained: sequential with 1 thread "
        f"{workers['sequential_1_thread_seconds']:.1f} s, 2 worker processes with 1 thread each "
        f"{workers['workers_2_seconds']:.1f} s (speed-up "
        f"{workers['speedup_same_threads']:.2f}x), sequential with 2 threads (the default on 2 "
        f"cores) {workers['sequential_2_threads_seconds']:.1f} s (speed-up "
        f"{workers['speedup_over_default']:.2f}x); per-candidate test and validation accuracy "
        f"identical to the sequential run: {workers['same_per_candidate_metrics']}.",
        "",
    ]
    metrics = {
        "candidates_rerun_ratio": rerun["ratio"],
        "candidates_speedup_same_threads": workers["speedup_same_threads"],
        "candidates_speedup_over_default": workers["speedup_over_default"],
    }
    return lines, metrics


def search_section(r: dict, out: Path) -> tuple[list[str], dict]:
    """benchmarks/search.py: tuned against default test accuracy."""
    lines = [
        "## Hyperparameter search: tuned against default",
        "",
        f"`{r['command']}` ({r['seconds'] / 60:.0f} min)",
        "",
        (out / "search.md").read_text() if (out / "search.md").is_file() else "",
    ]
    metrics = {
        f"search_{e}_{s}_test_gain": row["test_gain"]["mean"]
        for e, by_s in r["summary"].items()
        for s, row in by_s.items()
    }
    return lines, metrics


SECTIONS = {
    "startup": startup_section,
    "training_throughput": throughput_section,
    "orchestration": orchestration_section,
    "scaling": scaling_section,
    "shards": shards_section,
    "training_throughput_shards": throughput_shards_section,
    "data_efficiency": data_efficiency_section,
    "pretrained_transfer": pretrained_section,
    "serving": serving_section,
    "serving_misuse": serving_misuse_section,
    "unlabelled": unlabelled_section,
    "candidates": candidates_section,
    "search": search_section,
}


def build(results: Path = RESULTS) -> tuple[str, dict]:
    import torch

    cuda = torch.cuda.is_available()
    no_gpu = "not available: no GPU was lent to this task, so nothing was measured on CUDA"
    lines = [
        "# Benchmark report",
        "",
        f"Machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, torch {torch.__version__}; CUDA "
        f"{'available' if cuda else no_gpu}."
        " The CPU is shared with other work; every comparison is a ratio measured within one "
        "run, alternating where it can.",
        "",
    ]
    metrics: dict = {}
    for name, section in SECTIONS.items():
        result = _load(results, name)
        if result is None:
            lines += [f"## {name}", "", "Not run (no results file).", ""]
            continue
        more, values = section(result, results)
        lines += more
        metrics.update(values)
    return "\n".join(lines) + "\n", metrics


def log_to_mlflow(metrics: dict, results: Path = RESULTS) -> str:
    import mlflow

    from tasks.core import tracking
    from tasks.core.params import resolve_params

    params = resolve_params(ROOT / "params.yaml")
    experiment_id = tracking.configure(params.storage.tracking_uri, ROOT, EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name="benchmarks") as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for path in sorted(results.iterdir()):
            if path.suffix in (".json", ".md", ".png"):
                mlflow.log_artifact(str(path))
        return run.info.run_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of NAME.json")
    args = parser.parse_args(argv)
    text, metrics = build(args.results)
    (args.results / "REPORT.md").write_text(text)
    print(f"wrote {args.results / 'REPORT.md'}")
    if args.mlflow:
        run_id = log_to_mlflow(metrics, args.results)
        print(f"logged to MLflow experiment {EXPERIMENT!r}, run {run_id}")


if __name__ == "__main__":
    main()
