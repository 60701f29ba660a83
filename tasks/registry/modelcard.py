"""The model card of a registered version, generated from what the pipeline already wrote, so
a reviewer can decide a promotion from the registry page alone.

``collect_card_facts`` gathers the facts (reports, manifests, DVC hashes, the checkpoint's
card) into one JSON-able dict; ``model_card_markdown`` renders them, a pure function. At
registration the card is written to ``reports/model_card.md``, logged with its facts
(``model_card.json``) and the registered candidate's reliability diagram on the register run,
and set as the version's description; after the promotion gate, ``record_promotion`` renders
the version's own logged facts again with the decision, so it works for any version, on any
machine that reaches the registry.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

CARD_ARTIFACT = "model_card.md"
FACTS_ARTIFACT = "model_card.json"
DIAGRAM_ARTIFACT = "reliability.png"
DESCRIPTION_LIMIT = 5000  # characters of a version description a SQL registry store keeps


# ---- facts ------------------------------------------------------------------------------


def _optional_json(path: Path) -> dict | None:
    from tasks.core.context import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _dataset_facts(project_dir: Path, path: str, spec, digests: dict[str, str]) -> dict:
    """Name, DVC path and hash, image and byte counts per split, classes, image size.

    A dataset this project never prepared (a source given as a checkpoint, or a register
    stage run on its own) is named with ``prepared: False``: the card says so instead of
    failing after the version was registered."""
    from tasks.data.manifest import MANIFEST, describe_spec, read_info, read_manifest

    dataset_dir = project_dir / path
    if not (dataset_dir / MANIFEST).is_file():
        return {"dataset": describe_spec(spec), "path": path, "prepared": False}
    manifest = read_manifest(dataset_dir)
    info = read_info(dataset_dir)
    return {
        "dataset": describe_spec(spec),
        "name": info.get("name"),
        "path": path,
        "dvc_hash": digests.get(path),
        "images": int(len(manifest)),
        "bytes": int(manifest["bytes"].sum()),
        "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().items()},
        "classes": len(info["classes"]),
        "median_size": [int(manifest["width"].median()), int(manifest["height"].median())],
        "modes": sorted(str(m) for m in manifest["mode"].unique()),
        "skipped_files": len(info.get("skipped", [])),
    }


def _source_model_facts(pretrain: dict | None) -> dict | None:
    if not pretrain:
        return None
    record = pretrain.get("checkpoint") or {}
    return {
        "source": pretrain.get("source"),
        "trained": pretrain.get("trained"),
        "source_test_accuracy": pretrain.get("source_test_accuracy"),
        "objective": pretrain.get("objective"),
        "images": pretrain.get("images"),
        "final_knn_accuracy": pretrain.get("final_knn_accuracy"),
        "chosen": pretrain.get("chosen"),
        "checkpoint": {k: record[k] for k in ("spec", "kind", "sha256", "arch") if k in record}
        or None,
    }


def _candidate_facts(metrics: dict, transfer: dict | None) -> dict[str, dict]:
    """Each candidate's metrics, its gain and negative-transfer flag, forgetting, training."""
    flags = metrics.get("negative_transfer", {})
    forgot = (metrics.get("forgetting") or {}).get("candidates", {})
    out = {}
    for name, m in metrics["candidates"].items():
        trained = (transfer or {}).get(name, {})
        out[name] = {
            **m,
            "gain": flags.get(name, {}).get("gain"),
            "threshold": flags.get(name, {}).get("threshold"),
            "negative": bool(flags.get(name, {}).get("negative", False)),
            "forgetting": forgot.get(name, {}).get("forgetting"),
            "train_images": trained.get("train_images"),
            "epochs_run": trained.get("epochs_run"),
            "search": trained.get("search"),
        }
    return out


def collect_card_facts(ctx, registration: dict, promotion: dict | None = None) -> dict:
    """What the card says, read from the project after ``register``: ``reports/*.json``,
    the data manifests and their DVC hashes, the registered checkpoint's card and, when
    another step wrote it, ``reports/export.json``."""
    from tasks.core import versioning
    from tasks.core.context import PATHS, read_candidate_reports, read_json
    from tasks.data.manifest import MANIFEST
    from tasks.modeling.models import read_card
    from tasks.registry.publishing import version_description

    layout, p = ctx.layout, ctx.params
    metrics = read_json(layout.metrics)
    best = registration["strategy"]
    card = read_card(layout.candidates / best)
    paths = {role: PATHS[f"{role}_data"] for role in ("source", "target")}
    digests = versioning.current_dir_hashes(
        ctx.project_dir, dict.fromkeys(paths.values(), MANIFEST)
    )
    calibration = _optional_json(layout.calibration) or {}
    commit, dirty = versioning.git_revision(ctx.project_dir)
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "name": registration["model_name"],
            "version": str(registration["version"]),
            "strategy": best,
            "arch": card.arch,
            "aliases": list(registration.get("aliases", [])),
            "champion_alias": p.registry.champion_alias,
            "register_run_id": registration.get("run_id"),
            "params_hash": p.digest(),
            "git_commit": commit,
            "git_dirty": dirty,
        },
        "input": version_description(card),
        "classes": list(card.classes),
        "data": {
            role: _dataset_facts(ctx.project_dir, path, getattr(p.data, role), digests)
            for role, path in paths.items()
        },
        "source_model": _source_model_facts(_optional_json(layout.pretrain_report)),
        "validation": _optional_json(layout.validation_report),
        "best": metrics["best"],
        "selected_on": metrics.get("selected_on"),
        "candidates": _candidate_facts(
            metrics, read_candidate_reports(layout, metrics["candidates"])
        ),
        "forgetting": (metrics.get("forgetting") or {}).get("source_model_probe_accuracy"),
        "calibration": {"bins": calibration.get(best, []), "image": None},
        "export": _optional_json(layout.export_report),
        "promotion": promotion,
    }


# ---- rendering ----------------------------------------------------------------------------


def _num(value, digits: int = 4, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _with_ci(value, ci) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if not ci or any(x is None or math.isnan(x) for x in ci):
        return _num(value)
    return f"{value:.4f} ({ci[0]:.3f}-{ci[1]:.3f})"


def _section(title: str, lines: list[str]) -> str:
    return f"## {title}\n\n" + "\n".join(lines).rstrip() + "\n"


def _intended_use(f: dict) -> list[str]:
    target, model = f["data"]["target"], f["model"]
    size = "x".join(str(s) for s in target["median_size"])
    src = f.get("source_model") or {}
    if src.get("checkpoint"):
        origin = f"the pretrained checkpoint `{src['checkpoint'].get('spec')}`"
    elif src.get("source") == "auto":
        origin = f"the source ranked best on the target, `{src.get('chosen')}`"
    else:
        origin = f"a model pretrained on the source `{f['data']['source']['dataset']}`"
    strategy = model["strategy"]
    labelled = f["candidates"][strategy].get("train_images") or target["splits"].get("train")
    made = {
        "scratch": f"Trained from random weights on {labelled} labelled target images (the "
        f"from-scratch baseline was chosen over transfer from {origin}).",
        "source_only": f"It is {origin}, untouched: no target image trained it.",
    }.get(
        strategy,
        f"Made by transfer learning: the `{strategy}` strategy on {labelled} labelled target "
        f"images, starting from {origin}.",
    )
    made += _search_sentence(f["candidates"][strategy].get("search"))
    return [
        f"Classifies an image into one of the {len(f['classes'])} classes of the target "
        f"`{target['dataset']}` (listed under Classes), with a probability for each. {made}",
        "",
        f"Intended for images like the target's ({size} px median, modes "
        f"{', '.join(target['modes'])}), where an error is cheap or a person reviews the "
        "answer.",
        "",
        "**Out of scope:**",
        "",
        f"- images of any other class: there is no 'none of these' answer, the model always "
        f"names one of the {len(f['classes'])} classes;",
        "- images unlike the target data (another domain, camera, resolution or drawing "
        "style): accuracy was measured on the target's test split only;",
        "- decisions where a wrong answer is costly and nobody checks it (see Limitations).",
    ]


def _data_lines(f: dict) -> list[str]:
    lines = [
        "| role | dataset | DVC path | DVC hash | images | bytes | splits |",
        "|---|---|---|---|---|---|---|",
    ]
    for role in ("source", "target"):
        d = f["data"][role]
        if d.get("prepared") is False:
            lines.append(f"| {role} | `{d['dataset']}` | `{d['path']}` | not prepared here | | | |")
            continue
        splits = ", ".join(f"{k} {v}" for k, v in sorted(d["splits"].items()))
        digest = f"`{d['dvc_hash']}`" if d["dvc_hash"] else "not recorded"
        lines.append(
            f"| {role} | `{d['dataset']}` | `{d['path']}` | {digest} | {d['images']:,} | "
            f"{d['bytes']:,} | {splits} |"
        )
    src = f.get("source_model") or {}
    if src.get("checkpoint"):
        c = src["checkpoint"]
        lines += [
            "",
            f"Source model: checkpoint `{c.get('spec')}` ({c.get('kind')}, "
            f"{c.get('arch')}, sha256 `{str(c.get('sha256'))[:16]}`).",
        ]
    elif src.get("source_test_accuracy") is not None:
        lines += [
            "",
            f"Source model: trained on the source, source test accuracy "
            f"{_num(src['source_test_accuracy'])}.",
        ]
    if src.get("objective") not in (None, "supervised"):
        knn = src.get("final_knn_accuracy")
        lines += [
            "",
            f"Source model: self-supervised ({src['objective']}) on the {src.get('images')}'s "
            "images, without labels or a classifier"
            + ("." if knn is None else f"; kNN accuracy on the target's val split {_num(knn)}."),
        ]
    checked = f.get("validation") or {}
    if "target" in checked:
        shown = [
            f"{role} {'passed' if checked[role]['success'] else 'FAILED'} "
            f"{checked[role]['expectations']} expectations"
            for role in ("source", "target")
            if role in checked
        ]
        shift = checked.get("domain_shift") or {}
        ks = shift.get("ks_mean")
        lines += [
            "",
            f"Validation (Great Expectations): {'; '.join(shown)}."
            + (f" Domain shift, KS of mean intensity: {ks}." if ks is not None else ""),
        ]
    return lines


def _candidate_lines(f: dict) -> list[str]:
    first = next(iter(f["candidates"].values()))
    n, val_n = first.get("n"), first.get("val_n")
    lines = [
        f"Test split: {n} images; validation split: {val_n or 0} images. Intervals are 95% "
        "Wilson intervals of the accuracy. The registered candidate was chosen on "
        f"`{f.get('selected_on')}`.",
        "",
        "| candidate | test accuracy (95% CI) | val accuracy (95% CI) | macro-F1 | ECE | "
        "gain over scratch | forgetting |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in f["candidates"].items():
        shown = f"**{name}** (registered)" if name == f["model"]["strategy"] else name
        gain = _num(m.get("gain"), sign=True)
        if m.get("negative"):
            gain += " NEGATIVE TRANSFER"
        lines.append(
            f"| {shown} | {_with_ci(m.get('accuracy'), m.get('accuracy_ci'))} | "
            f"{_with_ci(m.get('val_accuracy'), m.get('val_accuracy_ci'))} | "
            f"{_num(m.get('macro_f1'))} | {_num(m.get('ece'))} | {gain} | "
            f"{_num(m.get('forgetting'), sign=True)} |"
        )
    lines += ["", "Negative transfer: " + _negative_text(f["candidates"])]
    if f.get("forgetting") is not None:
        lines += [
            "",
            "Forgetting: the source model's own backbone, linear-probed on the source "
            f"test split, scores {_num(f['forgetting'])}; each candidate's forgetting is "
            "that minus its backbone's probe accuracy (positive: the source task is "
            "partly forgotten).",
        ]
    return lines


def _search_sentence(search: dict | None) -> str:
    """How a hyperparameter search chose the candidate's values (none when it had no search)."""
    if not search:
        return ""
    values = ", ".join(f"`{k}` {v:.4g}" for k, v in search["best_params"].items())
    trials = search["complete"] + search["pruned"] + search["failed"]
    return (
        f" Its hyperparameters were chosen by a search of {trials} trials on the validation "
        f"split: {values} (val accuracy {_num(search['best_value'])}, against "
        f"{_num(search['default_value'])} with the values as given)."
    )


def _negative_text(candidates: dict[str, dict]) -> str:
    flagged = [
        f"{n} fell below scratch by more than the margin (gain {_num(m['gain'], sign=True)}, "
        f"margin {_num(m['threshold'])})"
        for n, m in candidates.items()
        if m.get("negative")
    ]
    if not flagged:
        return "none flagged (no candidate fell below scratch by more than the margin)."
    return "; ".join(flagged) + "."


def _mean_confidence(bins: list[dict]) -> tuple[float, float] | None:
    n = sum(b["count"] for b in bins)
    if not n:
        return None
    conf = sum(b["count"] * b["confidence"] for b in bins) / n
    acc = sum(b["count"] * b["accuracy"] for b in bins) / n
    return conf, acc


def _calibration_lines(f: dict, table: bool = True) -> list[str]:
    m = f["candidates"][f["model"]["strategy"]]
    bins = f["calibration"]["bins"]
    lines = [f"Expected calibration error (ECE) on the test split: {_num(m.get('ece'))}."]
    means = _mean_confidence(bins)
    if means:
        conf, acc = means
        how = "over-confident" if conf > acc else "under-confident"
        lines[0] += f" Mean confidence {conf:.3f} against accuracy {acc:.3f}: {how}."
    image = f["calibration"].get("image")
    if image:
        lines += ["", f"![Reliability diagram]({image})"]
    else:
        lines += [
            "",
            f"Reliability diagram: `{DIAGRAM_ARTIFACT}` in the artifacts of the "
            f"register run `{f['model'].get('register_run_id')}`.",
        ]
    if bins and table:
        lines += [
            "",
            "| confidence bin | mean confidence | accuracy | images |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {b['bin_lower']:.2f}-{b['bin_upper']:.2f} | {b['confidence']:.3f} | "
            f"{b['accuracy']:.3f} | {b['count']} |"
            for b in bins
        ]
    return lines


def _promotion_lines(f: dict) -> list[str]:
    outcome = f.get("promotion")
    if not outcome:
        return [
            "Pending at registration: the promotion gate decides after this card is written. "
            "Its decision and reason replace this section in the registry's description of "
            f"this version and in its `{CARD_ARTIFACT}` artifact; its numbers are the "
            "version's `gate.*` tags."
        ]
    gate = outcome.get("gate") or {}
    before = outcome.get("champion_before")
    champion = f.get("model", {}).get("champion_alias", "champion")
    if outcome.get("promoted"):
        how = "FORCED past the gate by a person" if outcome.get("forced") else "promoted"
        was = f"was version {before}" if before else "the first champion"
        decision = f"**{how}**: now @{champion} ({was})"
    elif before:
        decision = f"**kept out**: @{champion} stays version {before}"
    else:
        decision = f"**kept out**: there is still no @{champion}"
    lines = [
        f"Gate decision ({outcome.get('decided_at', '?')}): {decision}.",
        "",
        f"Reason: {outcome.get('reason')}",
    ]
    asked = outcome.get("asked")
    if asked:
        lines += ["", f"Asked for by {asked.get('by')} (`tlp promote`): {asked.get('reason')}"]
    if gate:
        champ = gate.get("champion_accuracy")
        lines += [
            "",
            f"On the same {gate.get('n')} test images: this version "
            f"{_num(gate.get('candidate_accuracy'))}"
            + (f", the champion {_num(champ)}" if champ is not None else "")
            + (
                f"; exact McNemar one-sided p = {gate['p_value']:.4g} "
                f"({gate.get('candidate_only_correct')} vs "
                f"{gate.get('champion_only_correct')} discordant)"
                if gate.get("p_value") is not None
                else ""
            )
            + f". Rules: accuracy >= {gate.get('min_accuracy')}, gain >= "
            f"{gate.get('min_delta')}, p < {gate.get('alpha')}.",
        ]
    return lines


def _limitations(f: dict) -> list[str]:
    m = f["candidates"][f["model"]["strategy"]]
    lines = []
    ci = m.get("accuracy_ci")
    if ci and not any(math.isnan(x) for x in ci):
        lines.append(
            f"- Small test set: {m.get('n')} images, so test accuracy is known only to "
            f"{ci[0]:.3f}-{ci[1]:.3f} (95%); candidates whose intervals overlap are not shown "
            "to differ."
        )
    if m.get("val_n") is not None:
        ties = [
            n
            for n, c in f["candidates"].items()
            if c.get("val_accuracy") == m.get("val_accuracy") and n != f["model"]["strategy"]
        ]
        tied = (
            (f"; tied with {', '.join(ties)} (the earlier in `transfer.strategies` is registered)")
            if ties
            else ""
        )
        lines.append(f"- Chosen on {m.get('val_n')} validation images{tied}.")
    negative = [n for n, c in f["candidates"].items() if c.get("negative")]
    if negative:
        lines.append(
            f"- Negative transfer: {', '.join(negative)} did worse than training from "
            "scratch; the source does not help every strategy on this target."
        )
    if f["model"]["strategy"] == "scratch":
        lines.append(
            "- No transfer candidate beat the from-scratch baseline on validation: "
            "the source did not help this target."
        )
    means = _mean_confidence(f["calibration"]["bins"])
    if means:
        conf, acc = means
        how = "over-states" if conf > acc else "under-states"
        lines.append(
            f"- Calibration: ECE {_num(m.get('ece'))}; the confidence {how} the "
            "chance of being right, so do not read the probability as one."
        )
    lines.append(
        "- Measured on the target's own test split only; no fairness, robustness or "
        "out-of-distribution evaluation was run."
    )
    return lines


def _export_lines(export: dict | None) -> list[str]:
    if not export:
        return []
    lines = []
    if export.get("onnx"):
        lines.append(
            f"- ONNX (opset {export.get('opset')}, dynamic batch): `onnx/model.onnx` in the "
            f"register run's artifacts (`{export['onnx']}`, DVC-versioned); it takes the "
            "preprocessed float tensor, its metadata holds the preprocessing and class names."
        )
    parity = export.get("parity")
    if parity:
        same = "identical" if parity.get("labels_identical") else "DIFFERENT"
        lines.append(
            f"- ONNX export: onnxruntime against torch on {parity.get('n')} test images, max "
            f"absolute logit difference {parity.get('max_abs_logit_diff'):.2e} (tolerance "
            f"{parity.get('atol')}), predicted labels {same}."
        )
    int8 = export.get("int8")
    if int8:
        lines.append(
            f"- INT8 ONNX: accuracy change {_num(int8.get('accuracy_change'), sign=True)}, "
            f"size x{_num(int8.get('size_ratio'), 2)}, latency "
            f"x{_num(int8.get('latency_ratio'), 2)} of the float model (the float model stays "
            "the registered one)."
        )
    return lines


def _how_to_load(f: dict) -> list[str]:
    model = f["model"]
    name, version = model["name"], model["version"]
    aliases = model.get("aliases", [])
    lines = [
        "```python",
        "import mlflow",
        "",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # this version',
    ]
    lines += [f'# or "models:/{name}@{a}" while @{a} points here' for a in aliases]
    lines += [
        "model.predict(images)  # uint8 arrays HxW or HxWxC (or a batch), or PNG/JPEG bytes",
        "# file paths only under a root you allow: load_model(..., model_config=",
        '#     {"allow_paths_under": "/data/images"})',
        "# -> DataFrame: label, probability, probabilities",
        "```",
        "",
        f"A folder, manifest or list of images in batch: `tlp predict INPUT --model "
        f"models:/{name}/{version} --out predictions.parquet`.",
        "",
        f["input"],
    ]
    return lines + ([""] + _export_lines(f.get("export")) if f.get("export") else [])


def model_card_markdown(facts: dict, bins_table: bool = True) -> str:
    """The card as markdown: intended use, data, classes, candidates with intervals,
    calibration (with the reliability bins as a table unless ``bins_table`` is false), the
    promotion decision, limitations and how to load the model."""
    model = facts["model"]
    m = facts["candidates"][model["strategy"]]
    head = (
        f"# Model card: {model['name']} version {model['version']}\n\n"
        f"`{model['arch']}` fine-tuned with `{model['strategy']}`: test accuracy "
        f"{_with_ci(m.get('accuracy'), m.get('accuracy_ci'))} on {m.get('n')} images. "
        f"Generated {facts.get('generated')} from git commit `{str(model.get('git_commit'))[:12]}`"
        f"{' (uncommitted changes)' if model.get('git_dirty') else ''}, params hash "
        f"`{model.get('params_hash')}`.\n"
    )
    parts = [
        head,
        _section("Intended use", _intended_use(facts)),
        _section("Data", _data_lines(facts)),
        _section("Classes", [", ".join(f"`{c}`" for c in facts["classes"])]),
        _section("Candidates", _candidate_lines(facts)),
        _section("Calibration", _calibration_lines(facts, bins_table)),
        _section("Promotion", _promotion_lines(facts)),
        _section("Limitations", _limitations(facts)),
        _section("How to load it", _how_to_load(facts)),
    ]
    return "\n".join(parts)


def description_markdown(facts: dict, image_url: str | None = None) -> str:
    """The card as the registry keeps it: the diagram from the run's artifacts, and within
    ``DESCRIPTION_LIMIT`` (the reliability table goes first, then the text is cut)."""
    shown = {**facts, "calibration": {**facts["calibration"], "image": image_url}}
    text = model_card_markdown(shown)
    if len(text) > DESCRIPTION_LIMIT:
        text = model_card_markdown(shown, bins_table=False)
    if len(text) > DESCRIPTION_LIMIT:
        more = f"\n\n... (cut here: the whole card is `{CARD_ARTIFACT}` of the register run)\n"
        text = text[: text.rfind("\n", 0, DESCRIPTION_LIMIT - len(more))] + more
    return text


# ---- publishing ---------------------------------------------------------------------------


def _artifact_url(run_id: str, path: str) -> str:
    """The artifact as the MLflow UI serves it, relative to the UI's own address."""
    return f"get-artifact?path={path}&run_uuid={run_id}"


def _publish(facts: dict, run_id: str | None) -> str:
    """Card and facts on the register run, the card (with its diagram) as the description."""
    from mlflow import MlflowClient

    client = MlflowClient()
    card = model_card_markdown(facts)
    image = None
    if run_id:
        client.log_text(run_id, card, CARD_ARTIFACT)
        client.log_text(run_id, json.dumps(facts, indent=2), FACTS_ARTIFACT)
        image = _artifact_url(run_id, DIAGRAM_ARTIFACT) if facts["calibration"]["bins"] else None
    model = facts["model"]
    client.update_model_version(model["name"], model["version"], description_markdown(facts, image))
    return card


def publish_model_card(ctx, registration: dict) -> Path:
    """At registration: ``reports/model_card.md``, the artifacts ``model_card.md``,
    ``model_card.json`` and ``reliability.png`` of the register run, and the version's
    description."""
    from tasks.core import tracking
    from tasks.evaluation.plots import plot_reliability

    facts = collect_card_facts(ctx, registration)
    run_id = registration.get("run_id")
    bins = facts["calibration"]["bins"]
    if run_id and bins:
        strategy = facts["model"]["strategy"]
        fig = plot_reliability({strategy: bins}, {strategy: facts["candidates"][strategy]["ece"]})
        tracking.log_run_figure(run_id, fig, DIAGRAM_ARTIFACT)
    card = _publish(facts, run_id)
    path = ctx.layout.model_card
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(card)
    return path


def _logged_facts(name: str, version: str) -> tuple[dict | None, str | None]:
    """The facts the register stage logged with a version, and its run; None without them
    (a version registered before model cards, or by other means)."""
    import tempfile

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        return None, None
    with tempfile.TemporaryDirectory(prefix="tlp-card-") as tmp:
        try:
            path = client.download_artifacts(run_id, FACTS_ARTIFACT, tmp)
        except (MlflowException, OSError):
            return None, run_id
        return json.loads(Path(path).read_text()), run_id


def record_promotion(name: str, version: str, outcome: dict) -> bool:
    """The gate's decision and reason into the version's card (description and artifact).
    False, and nothing written, for a version without logged card facts."""
    from mlflow import MlflowClient

    facts, run_id = _logged_facts(name, version)
    if facts is None:
        return False
    decided = {**outcome, "decided_at": datetime.now(UTC).isoformat(timespec="seconds")}
    aliases = list(MlflowClient().get_model_version(name, version).aliases)
    facts = {**facts, "promotion": decided, "model": {**facts["model"], "aliases": aliases}}
    _publish(facts, run_id)
    return True
