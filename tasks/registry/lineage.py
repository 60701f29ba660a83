"""Where a registered model came from, and a rerun that checks it: ``tlp lineage`` and
``tlp reproduce``.

The register stage tags each version with the git commit, params hash, DVC hashes of every
dataset and checkpoint, how the source was pretrained and the checkpoint it came from
(``source.*``: objective, images, checkpoint spec, kind, location, sha256), the values a
hyperparameter search chose (``search.*``), the MLflow runs
and the Prefect flow run, and logs the exact ``params.resolved.yaml``, ``dvc.lock`` and
``reports/metrics.json`` under ``lineage/``.
Reproducing clones the commit into a clean work dir, restores that params file and lock,
pulls the datasets from the DVC remote by hash, reruns every training stage on them (into a
scratch MLflow store, so the registry is untouched) and compares the metrics.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
from collections import deque
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tasks.registry.publishing import LINEAGE_FILES

log = logging.getLogger(__name__)

RERUN_STAGES = ("validate", "pretrain", "transfer", "evaluate")
FETCHED = ("data/source", "data/target")
# and each candidate, models/candidates/<strategy> (a stage transfer@<strategy> each)
CHECKED_OUTPUTS = ("data/source", "data/target", "models/source")
CANDIDATE_OUTPUTS = "models/candidates/"


class LineageError(ValueError):
    """A model reference cannot be resolved, or its lineage is incomplete."""


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> (name, alias, version)."""
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, _, version = ref.rpartition("/")
        if name and version.isdigit():
            return name, None, version
    raise LineageError(f"{ref!r}: expected NAME@ALIAS or NAME/VERSION")


def resolve_version(ref: str):
    name, alias, version = parse_ref(ref)
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        raise LineageError(f"{ref}: not in the registry ({exc.message.splitlines()[0]})") from None


def _download(run_id: str, rel: str, dst: Path) -> Path | None:
    from mlflow.artifacts import download_artifacts

    try:
        return Path(
            download_artifacts(
                run_id=run_id, artifact_path=f"lineage/{Path(rel).name}", dst_path=str(dst)
            )
        )
    except Exception:  # older versions logged no lineage files
        return None


def lineage(ref: str, scratch: Path) -> dict:
    """Everything that made one registered version, gathered from the registry and its run."""
    mv = resolve_version(ref)
    tags = dict(mv.tags)
    run_id = tags.get("register_run_id") or mv.run_id
    files = {}
    for rel in LINEAGE_FILES:
        path = _download(run_id, rel, scratch / "lineage")
        files[rel] = str(path) if path else None
    params = None
    if files["params.resolved.yaml"]:
        params = yaml.safe_load(Path(files["params.resolved.yaml"]).read_text())
    info = {
        "model": mv.name,
        "version": str(mv.version),
        "aliases": list(mv.aliases),
        "git_commit": tags.get("git_commit"),
        "git_dirty": tags.get("git_dirty"),
        "params_hash": tags.get("params_hash"),
        "strategy": tags.get("strategy"),
        "test_accuracy": tags.get("test_accuracy"),
        "dvc": {k[len("dvc.") :]: v for k, v in sorted(tags.items()) if k.startswith("dvc.")},
        "mlflow_run_id": run_id,
        "mlflow_parent_run_id": tags.get("mlflow_parent_run_id"),
        "prefect_flow_run_id": tags.get("prefect_flow_run_id"),
        "prefect_flow_run_url": tags.get("prefect_flow_run_url"),
        "model_source": mv.source,
        "gate": {k[len("gate.") :]: v for k, v in sorted(tags.items()) if k.startswith("gate.")},
        "source": {k[len("source.") :]: v for k, v in tags.items() if k.startswith("source.")},
        "search": {k[len("search.") :]: v for k, v in tags.items() if k.startswith("search.")},
        "params": params,
        "files": files,
    }
    missing = [k for k in ("git_commit", "params_hash", "mlflow_parent_run_id") if not info[k]]
    if not info["dvc"]:
        missing.append("dvc hashes")
    info["complete"] = not missing and params is not None
    info["missing"] = missing + ([] if params is not None else ["params"])
    return info


def format_lineage(info: dict) -> str:
    lines = [
        f"{info['model']} version {info['version']}  aliases: "
        + (", ".join(f"@{a}" for a in info["aliases"]) or "none"),
        f"  git commit        : {info['git_commit']}"
        + ("  (uncommitted changes)" if info["git_dirty"] == "true" else ""),
        f"  params hash       : {info['params_hash']}",
        f"  strategy          : {info['strategy']}  test accuracy {info['test_accuracy']}",
        f"  MLflow run        : {info['mlflow_run_id']}  (pipeline {info['mlflow_parent_run_id']})",
        f"  Prefect flow run  : {info['prefect_flow_run_id']}  {info['prefect_flow_run_url']}",
        f"  model artifacts   : {info['model_source']}",
        "  DVC hashes        :",
        *[f"    {path:<20} {digest}" for path, digest in info["dvc"].items()],
    ]
    lines += _source_lines(info.get("source") or {})
    lines += _search_lines(info.get("search") or {})
    if info["gate"]:
        lines.append(
            f"  promotion gate    : {info['gate'].get('decision')}  ({info['gate'].get('reason')})"
        )
    if info["params"]:
        lines.append("  params            :")
        text = yaml.safe_dump(info["params"], sort_keys=False).rstrip()
        lines += ["    " + line for line in text.splitlines()]
    if info["missing"]:
        lines.append(f"  INCOMPLETE: missing {', '.join(info['missing'])}")
    return "\n".join(lines)


def _source_lines(source: dict) -> list[str]:
    """How the source model was pretrained (its objective, and the images a self-supervised
    one learnt from), and the pretrained checkpoint it came from, when it came from one."""
    lines = []
    if "objective" in source:
        images = f"  (on the {source['images']}'s images)" if "images" in source else ""
        lines.append(f"  source objective  : {source['objective']}{images}")
    if "checkpoint" not in source:
        return lines
    return lines + [
        f"  source checkpoint : {source['checkpoint']}  ({source.get('checkpoint_kind')}, "
        f"{source.get('checkpoint_arch')})",
        f"    location        : {source.get('checkpoint_location')}",
        f"    sha256          : {source.get('checkpoint_sha256')}",
    ]


def _search_lines(search: dict) -> list[str]:
    """The values a hyperparameter search chose, when the registered candidate was tuned."""
    if "trials" not in search:
        return []
    best = ", ".join(f"{k[len('best.') :]}={v}" for k, v in search.items() if k.startswith("best."))
    return [
        f"  search            : {best}  ({search['trials']} trials, val accuracy "
        f"{search.get('best_val_accuracy')} against {search.get('default_val_accuracy')} "
        "as given)"
    ]


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise LineageError(f"git {' '.join(args)} failed in {cwd}: {out.stderr.strip()}")
    return out.stdout.strip()


def _remote_url(project_dir: Path) -> str:
    from tasks.core import versioning

    with versioning.open_repo(project_dir) as repo:
        remote = repo.config["core"].get("remote")
        if not remote:
            raise LineageError(f"{project_dir}: no default DVC remote to fetch the data from")
        url = repo.config["remote"][remote]["url"]
    if "://" not in url and not Path(url).is_absolute():
        url = str((project_dir / ".dvc" / url).resolve())
    return url


def prepare_workdir(info: dict, project_dir: Path, workdir: Path) -> Path:
    """Clone the commit, restore the exact params and dvc.lock, pull the data by hash."""
    from tasks.core import versioning

    if not info["complete"] or not all(info["files"].get(f) for f in LINEAGE_FILES):
        raise LineageError(f"lineage of version {info['version']} is incomplete: {info['missing']}")
    if workdir.exists() and any(workdir.iterdir()):
        raise LineageError(f"{workdir}: work dir must be new or empty")
    _git(project_dir, "cat-file", "-e", f"{info['git_commit']}^{{commit}}")
    subprocess.run(
        ["git", "clone", "-q", "--no-checkout", str(project_dir), str(workdir)], check=True
    )
    _git(workdir, "checkout", "-q", info["git_commit"])
    for rel in ("params.resolved.yaml", "dvc.lock"):
        (workdir / rel).write_bytes(Path(info["files"][rel]).read_bytes())
    versioning.ensure_remote(workdir, _remote_url(project_dir))
    with versioning.open_repo(workdir) as repo:
        repo.pull(targets=list(FETCHED))
    return workdir


def _close(a: object, b: object, tol: float = 1e-9) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and (math.isclose(a, b, abs_tol=tol) or (math.isnan(a) and math.isnan(b)))
        )
    return a == b


RERUN_SCRIPT = """
import json, logging, sys
from pathlib import Path
progress = logging.StreamHandler(sys.stderr)
progress.setFormatter(logging.Formatter("%(message)s"))
logging.getLogger("tasks").addHandler(progress)
logging.getLogger("tasks").setLevel(logging.INFO)
import tasks
from tasks.core import versioning
from tasks.core.context import open_context
from tasks.core.params import resolve_params
from tasks.stages import get_stage
workdir = Path.cwd()
params = resolve_params(workdir / "params.resolved.yaml")
store = "sqlite:///" + str(workdir / "reproduce.db")
storage = params.storage.model_copy(update={"tracking_uri": store})
params = params.model_copy(update={"storage": storage})
ctx = open_context(workdir, params)
for name in sys.argv[1:]:
    get_stage(name).run(ctx)
    versioning.commit_stage(workdir, name)
print(json.dumps({"code": str(Path(tasks.__file__).parent)}))
"""


def rerun(workdir: Path) -> dict:
    """Run the training stages on the fetched data in a fresh process, with the commit's own
    ``tasks/`` when the commit has one, into a scratch MLflow store (the registry is untouched)."""
    import sys

    from tasks.core import versioning
    from tasks.core.context import read_json

    with tempfile.TemporaryFile(mode="w+") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", RERUN_SCRIPT, *RERUN_STAGES],
            cwd=workdir,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        tail: deque[str] = deque(maxlen=30)
        for line in proc.stderr:  # the stages' progress, passed on as it comes: never silent
            tail.append(line.rstrip())
            if line.strip():
                log.info("reproduce: %s", line.rstrip())
        proc.wait()
        stdout.seek(0)
        printed = stdout.read()
    if proc.returncode != 0:
        said = "\n".join(tail).strip()[-1500:]
        raise LineageError(f"rerun in {workdir} failed: {said}")
    code = json.loads(printed.strip().splitlines()[-1])["code"]
    return {
        "metrics": read_json(workdir / "reports" / "metrics.json"),
        "hashes": versioning.output_hashes(workdir),
        "code": code,
    }


def reproduce(ref: str, project_dir: Path, workdir: Path, lock_wait: float = 0.0) -> dict:
    """Fetch, rerun, compare: metrics must match those logged at registration.

    The project is read (git history, registry, DVC remote) under its run lock, so a run
    that is pushing or committing is never read half-way; the rerun writes only into
    ``workdir``, under that folder's own lock."""
    from tasks.core.locking import run_lock

    with run_lock(project_dir, wait=lock_wait, what="tlp reproduce (reading the project)"):
        info = lineage(ref, workdir.parent / f".{workdir.name}-lineage")
        prepare_workdir(info, project_dir, workdir)
    with run_lock(workdir, what=f"tlp reproduce of {ref}"):
        result = rerun(workdir)
    logged = json.loads(Path(info["files"]["reports/metrics.json"]).read_text())
    candidates = {p for p in [*info["dvc"], *result["hashes"]] if p.startswith(CANDIDATE_OUTPUTS)}
    checked = [*CHECKED_OUTPUTS, *sorted(candidates)]
    hashes = {p: (info["dvc"].get(p), result["hashes"].get(p)) for p in checked}
    return {
        "model": info["model"],
        "version": info["version"],
        "git_commit": info["git_commit"],
        "workdir": str(workdir),
        "code": result["code"],
        "metrics_match": _close(logged, result["metrics"]),
        "outputs_match": {p: a == b for p, (a, b) in hashes.items()},
        "logged_metrics": logged,
        "rerun_metrics": result["metrics"],
        "hashes": hashes,
    }
