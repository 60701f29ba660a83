"""Pre-flight: what would stop a run later is checked before any work starts.

``tlp run`` (and ``tlp validate``) call ``check`` right after params resolve, before the run
lock, Prefect or MLflow start; the flow calls it again when it opens a run (deployment runs
never pass through the CLI). Each problem stops with one line that names the params key,
the folder or the class, and a fix, often as the ``--set`` that makes it go away:

- data availability: a built-in's files (``fashion-mnist`` needs a Debian package), a folder
  that exists and has class folders. Bad files are left to ``prepare``, which names every
  one of them in one message (those a listing shows with those only decoding shows), so a
  user fixes them in one round; the split budget of such a folder is not checked here;
- split budget: every class of the source and the target, after ``limit``, can afford its
  test, val and labelled train images (the arithmetic of ``tasks.data.splits``) and
  ``validation.min_images_per_class``; the suggested values fit the smallest class;
- what params name exists and works here: the data folders and a ``pretrain.checkpoint``
  file are present and readable (``check_files``, first; the checkpoint's contents are
  ``check_checkpoint``'s); the timm architecture and its fit to ``preprocess.channels`` x
  ``image_size``, the optimizers and schedules of pretrain and transfer and ``base.device``
  (``check_machine``, last, as it imports torch and timm; tasks/modeling/feasibility.py);
- label spaces: folder classes among ``data.<role>.classes``, at least two classes in the
  label space and in the data of each dataset (a one-class "classifier" learns nothing);
- self-supervised pretraining: its views fit the resolved ``preprocess.image_size``;
- strategies: ``source_only`` needs every target class among the source model's classes
  (and a classifier: a self-supervised source has none);
  ``transfer.source: auto`` candidates pass ``check_candidate``.

Everything here is counting and listing: no image is decoded and no weights are loaded (but
for ``transfer.source: auto``, whose candidate checks read checkpoint headers); the model is
built on the meta device only. ``tlp params`` runs it too, so a value that cannot work never
exits 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.core.params import (
    SELF_SUPERVISED,
    DatasetParams,
    Params,
    ParamsError,
    ValidationParams,
)

SHOWN_CLASSES = 5  # at most this many class names in one message


class PreflightError(ParamsError):
    """A run cannot succeed with these params and data; the message names where and the fix."""


@dataclass(frozen=True)
class Inventory:
    """What a dataset will hold, known without reading an image."""

    role: str  # source | target
    name: str  # "folder DIR" or "built-in NAME", for messages
    label_space: tuple[str, ...]  # the classes the model is trained on
    counts: dict[str, int]  # images per class present, after ``limit``
    limited: bool  # ``limit`` made the counts smaller
    bad_files: bool = False  # prepare will refuse the folder and name them; counts unsure
    unlabeled: bool = False  # a folder of unlabelled images: one class, ``unlabeled``


def check(params: Params, project_dir: Path) -> None:
    """Raise PreflightError on the first problem that would stop the run after some work."""
    project_dir = Path(project_dir)
    check_files(params, project_dir)
    data = params.data
    inventories = {
        role: take_inventory(role, spec, project_dir)
        for role, spec in (("source", data.source), ("target", data.target))
    }
    for role, spec in (("source", data.source), ("target", data.target)):
        check_two_classes(inventories[role])
        check_split_budget(inventories[role], spec, params.validation)
    check_self_supervised(params)
    check_strategies(params, project_dir, inventories)
    check_machine(params, project_dir)  # last: torch and timm, unless it passed before


# ---- what params name, against this machine and timm ----------------------------------


def check_machine(params: Params, project_dir: Path | None = None) -> None:
    """Architecture, optimizers, schedules and device: each refused with its key when timm
    or torch say it cannot work here. What passed is remembered in the project's
    ``.tlp/feasible.json`` under the timm and torch versions, so ``tlp params`` and
    ``tlp run`` with values checked before skip importing them (seconds on a small machine)."""
    from tasks.modeling import feasibility

    try:
        feasibility.check_device(params.base.device)  # never remembered: GPUs come and go
    except ValueError as exc:
        raise PreflightError(f"base.device: {exc}") from None
    pre = params.preprocess
    checks = [
        ("model.arch", feasibility.check_arch, (params.model.arch, pre.channels, pre.image_size))
    ]
    for section in ("pretrain", "transfer"):
        cfg = getattr(params, section)
        checks.append((f"{section}.optimizer", feasibility.check_optimizer, (cfg.optimizer,)))
        checks.append(
            (
                f"{section}.scheduler",
                feasibility.check_scheduler,
                (cfg.scheduler, cfg.epochs, cfg.warmup_epochs),
            )
        )
    memory = _Feasible(project_dir)
    for key, call, args in checks:
        if memory.knows(call.__name__, args):
            continue
        try:
            call(*args)
        except ValueError as exc:
            raise PreflightError(f"{key}: {exc}") from None
        memory.add(call.__name__, args)
    memory.save()


class _Feasible:
    """Checks that passed, keyed by timm's and torch's versions (a new version checks again);
    a project that cannot be written to just checks every time."""

    def __init__(self, project_dir: Path | None) -> None:
        import json
        from importlib.metadata import PackageNotFoundError, version

        from tasks.core.context import WORK_DIR

        self.path = None if project_dir is None else Path(project_dir) / WORK_DIR / "feasible.json"
        try:
            self.versions = f"timm {version('timm')}, torch {version('torch')}"
        except PackageNotFoundError:
            self.versions = None
        self.passed: set[str] = set()
        self.added = False
        if self.path is None or self.versions is None:
            return
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and saved.get("versions") == self.versions:
            self.passed = set(saved.get("passed") or ())

    @staticmethod
    def _key(name: str, args: tuple) -> str:
        return f"{name}{list(args)}"

    def knows(self, name: str, args: tuple) -> bool:
        return self._key(name, args) in self.passed

    def add(self, name: str, args: tuple) -> None:
        self.passed.add(self._key(name, args))
        self.added = True

    def save(self) -> None:
        import json
        import os

        if not self.added or self.path is None or self.versions is None:
            return
        payload = {"versions": self.versions, "passed": sorted(self.passed)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(payload, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            return


def check_files(params: Params, project_dir: Path) -> None:
    """The data folders and a ``pretrain.checkpoint`` file exist and can be read."""
    for role in ("source", "target"):
        path = getattr(params.data, role).path
        if path is not None:
            _readable(f"data.{role}.path", path, project_dir, folder=True)
    _checkpoint_file(params, project_dir)


def _readable(key: str, value: str, project_dir: Path, folder: bool) -> Path:
    """``value`` (relative to the project) exists, is a folder or a file, and can be read."""
    import os

    path = (project_dir / Path(value).expanduser()).resolve()
    kind = "folder" if folder else "file or folder"
    if not path.exists():
        raise PreflightError(f"{key}: {path} does not exist; give an existing {kind}")
    if folder and not path.is_dir():
        raise PreflightError(
            f"{key}: {path} is not a folder (one subfolder per class; or, with unlabeled: "
            "true, images in any layout)"
        )
    mode = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.access(path, mode):
        raise PreflightError(f"{key}: {path} is not readable by this user; fix its permissions")
    return path


def _checkpoint_file(params: Params, project_dir: Path) -> None:
    from tasks.core.params.checkpoints import parse_checkpoint

    text = params.pretrain.checkpoint
    if text is not None and parse_checkpoint(text).kind == "file":
        _readable("pretrain.checkpoint", parse_checkpoint(text).value, project_dir, folder=False)


# ---- what each dataset holds ----------------------------------------------------------


def take_inventory(role: str, spec: DatasetParams, project_dir: Path) -> Inventory:
    """Classes and images per class of a built-in (declared) or a folder (listed)."""
    from tasks.data.splits import subsample_counts

    bad_files = False
    if spec.builtin is not None:
        name, found = _builtin_counts(role, spec.builtin)
    else:
        name, found, bad_files = _folder_counts(role, spec, project_dir)
    kept = subsample_counts(list(found.values()), spec.limit)
    counts = dict(zip(found, kept, strict=True))
    label_space = spec.classes or tuple(found)
    outside = [c for c in found if c not in label_space]
    if outside:
        raise PreflightError(
            f"data.{role}.classes: classes {_names(outside)} of data.{role} ({name}) are not "
            f"among data.{role}.classes {list(label_space)}; add them to it, or remove them "
            "from the data"
        )
    limited = kept != list(found.values())
    return Inventory(role, name, label_space, counts, limited, bad_files, spec.unlabeled)


def _builtin_counts(role: str, name: str) -> tuple[str, dict[str, int]]:
    from tasks.data.builtins import get_builtin

    builtin = get_builtin(name)
    problem = builtin.unavailable()
    if problem:
        raise PreflightError(f"data.{role}.builtin {name}: {problem}")
    return f"built-in {name}", dict(zip(builtin.classes, builtin.class_counts, strict=True))


def _folder_counts(
    role: str, spec: DatasetParams, project_dir: Path
) -> tuple[str, dict[str, int], bool]:
    """Images per class folder from a listing (what ``prepare`` will find, before decoding),
    and whether the listing already shows bad files that ``prepare`` will refuse."""
    from tasks.data.folders import resolve_dir
    from tasks.data.ingest import IngestError, scan_image_folder

    root = resolve_dir(spec.path, project_dir)
    try:
        scan = scan_image_folder(root, spec.unlabeled)
    except IngestError as exc:  # no such folder, or no class folders in it
        raise PreflightError(f"data.{role}.path: {exc}") from None
    counts = dict.fromkeys(scan.classes, 0)
    for _, name in scan.files:
        counts[name] += 1
    bad_files = bool(scan.fatal) or (bool(scan.bad) and not spec.skip_bad_files)
    return f"folder {root}", counts, bad_files


# ---- classes ---------------------------------------------------------------------------


def check_two_classes(inv: Inventory) -> None:
    """A classifier needs two classes in its label space and images of two in the data
    (a declared class without images still leaves a one-class training set)."""
    if inv.unlabeled:  # no classifier is trained on it: self-supervised pretraining only
        return
    present = [c for c, n in inv.counts.items() if n > 0]
    if len(inv.label_space) >= 2 and (len(present) >= 2 or inv.bad_files):
        return
    shown = present or list(inv.label_space)
    one = "one class" if len(shown) == 1 else f"{len(shown)} classes"
    raise PreflightError(
        f"data.{inv.role} ({inv.name}) has images of {one} ({_names(shown)}); a classifier "
        f"needs at least two: add a class folder with images to it"
    )


# ---- splits ---------------------------------------------------------------------------


def check_split_budget(inv: Inventory, spec: DatasetParams, bounds: ValidationParams) -> None:
    """The smallest class affords test + val + labelled train and the validation minimum;
    otherwise stop with the ``--set`` values that fit it (larger classes then fit too)."""
    from tasks.data.splits import affords, describe_need, fitting_splits

    if inv.bad_files or not inv.counts:  # prepare names the bad files first
        return
    smallest = min(inv.counts, key=inv.counts.__getitem__)  # the first of equals
    n = inv.counts[smallest]
    splits_fit = affords(n, spec)
    least = bounds.min_images_per_class
    if splits_fit and n >= least:
        return
    key = f"data.{inv.role}"
    if splits_fit:
        problem = f"fewer than validation.min_images_per_class ({least}) that validate requires"
    else:
        problem = f"too few for {describe_need(n, spec)}"
    changes = fitting_splits(n, spec)
    larger = f"a larger {key}.limit" if inv.limited else ""
    if changes is None:
        fix = "add images to it" + (f" or set {larger}" if larger else "")
        if spec.builtin is not None:
            fix = f"set {larger}"
    else:
        sets = [f"--set {key}.{k}={v}" for k, v in changes.items()]
        if n < least:
            sets.append(f"--set validation.min_images_per_class={n}")
        fix = "e.g. " + " ".join(sets) + (f" (or {larger})" if larger else "")
    images = "image" if n == 1 else "images"
    where = inv.name.removeprefix("folder ")
    where = f"in {where}" if spec.path is not None else f"of {where}"
    after = f" after {key}.limit={spec.limit}" if inv.limited else ""
    raise PreflightError(
        f"{key}: class {smallest!r} {where} has {n} {images}{after}, {problem}; {fix}"
    )


# ---- self-supervised pretraining ------------------------------------------------------


def check_self_supervised(params: Params) -> None:
    """The views of a self-supervised objective fit the image size the run resolved (params
    check it only when ``preprocess.image_size`` is set there, not when a checkpoint gives it)."""
    from tasks.core.params import check_augmentations

    size = params.preprocess.image_size
    if params.pretrain.objective not in SELF_SUPERVISED or size is None:
        return
    try:
        check_augmentations(params.pretrain.ssl, size)
    except ValueError as exc:
        raise PreflightError(str(exc)) from None


# ---- strategies -----------------------------------------------------------------------


def check_strategies(params: Params, project_dir: Path, inventories: dict[str, Inventory]) -> None:
    """What makes a requested strategy impossible and is known before any training."""
    target = inventories["target"]
    if params.transfer.source == "auto":
        _check_candidates(params, project_dir)
    strategies = params.transfer.strategies
    if "source_only" in strategies and params.pretrain.objective in SELF_SUPERVISED:
        rest = [s for s in strategies if s != "source_only"] or ["linear_probe"]
        raise PreflightError(
            "transfer.strategies: source_only predicts with the source model's classifier, "
            f"and pretrain.objective {params.pretrain.objective} trains a source without one "
            f"(no labels); drop it, e.g. --set transfer.strategies=[{','.join(rest)}]"
        )
    if "source_only" in strategies:
        found = source_classes(params, project_dir, inventories["source"])
        if found is None:  # chosen at run time, or a checkpoint that does not say
            return
        source, what = found
        missing = [name for name in target.label_space if name not in source]
        if missing:
            rest = [s for s in strategies if s != "source_only"] or ["linear_probe"]
            raise PreflightError(
                "transfer.strategies: source_only predicts the source model's classes, and "
                f"data.target ({target.name}) has classes that {what} has not: "
                f"{_names(missing)}; drop it, e.g. --set transfer.strategies=[{','.join(rest)}]"
            )


def source_classes(
    params: Params, project_dir: Path, source: Inventory
) -> tuple[tuple[str, ...], str] | None:
    """The classes the source model's head predicts, and what they are, or None when that is
    unknown before the run (``transfer.source: auto``, a checkpoint without a class list)."""
    from tasks.core.params.checkpoints import parse_checkpoint

    if params.transfer.source == "auto":
        return None
    checkpoint = params.pretrain.checkpoint
    spec = parse_checkpoint(checkpoint) if checkpoint is not None else None
    if spec is None or params.pretrain.train_on_source:  # trained on data.source's labels
        return source.label_space, f"data.source ({source.name})"
    from tasks.modeling.checkpoints import head_classes

    classes = head_classes(spec, params, project_dir)
    return None if classes is None else (tuple(classes), f"pretrain.checkpoint {spec}")


def _check_candidates(params: Params, project_dir: Path) -> None:
    """``transfer.source: auto``: each rank candidate passes the flow's own cheap check."""
    from tasks.transferability.sources import SourceError, check_candidate

    for spec in params.rank.candidates:
        try:
            check_candidate(spec, params, project_dir)
        except (SourceError, ParamsError) as exc:
            raise PreflightError(f"rank.candidates: {exc}") from None


def _names(names) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:SHOWN_CLASSES])
    return shown + (f" and {len(names) - SHOWN_CLASSES} more" if len(names) > SHOWN_CLASSES else "")


# ---- the task the registered model belongs to -----------------------------------------


def task_of(params: Params, project_dir: Path):
    """This run's task (tasks/registry/identity.py ``task_of``): the target's label space and
    identity, the same the register stage records."""
    from tasks.registry.identity import task_of as of

    return of(params.data.target, project_dir)


def check_task(params: Params, project_dir: Path, name: str | None = None) -> None:
    """Stop when registered model ``name`` (default ``registry.model_name``) holds versions of
    another task than this run's: it would register into it and the gate would compare
    versions of different tasks. Reads the store only when it exists (a missing SQLite file
    holds no model; tasks/core/stores.py says whether it should have been there)."""
    from tasks.core.params.storage import resolve_tracking_uri
    from tasks.registry.identity import TaskConflict, check_model, check_model_sqlite

    uri = resolve_tracking_uri(params.storage.tracking_uri, project_dir)
    name = name or params.registry.model_name
    task = task_of(params, project_dir)
    try:
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///"))
            if db.is_file():
                check_model_sqlite(db, name, task)
            return
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        check_model(name, task)
    except TaskConflict as exc:
        raise PreflightError(str(exc)) from None
