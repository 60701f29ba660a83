"""Pre-flight (tasks/stages/preflight.py): what would stop a run after minutes of work stops
it before any, in one line naming the key, the folder or class, and the ``--set`` that fixes
it; ``tlp run`` says so with exit code 2 before the run lock, Prefect or MLflow start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.params import default_section, resolve_params
from tasks.data.splits import affords, fitting_splits
from tasks.stages.preflight import PreflightError, check

ROOT = Path(__file__).resolve().parents[2]


def folder(root: Path, per_class: int, classes=tuple("0123456789")) -> Path:
    """Colour-inverted RGB 'digits' at 32 px: a user's small ImageFolder."""
    rng = np.random.default_rng(per_class)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = 255 - rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def params(*sets: str, profile: str = "default"):
    return resolve_params(ROOT / "params.yaml", profile, list(sets))


def stopped(p, project: Path = ROOT) -> str:
    with pytest.raises(PreflightError) as err:
        check(p, project)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> Path:
    return folder(tmp_path_factory.mktemp("few") / "inverted", 12)


def test_source_matching_is_the_digits_experiments_own():
    """``auto`` fits the frame and downsamples to 8 px for uci-digits only; a folder target
    gets no matching."""
    digits = params()
    assert (digits.pretrain.source_fit_frame, digits.pretrain.source_resolution) == (True, 8)
    user = params("data.target.path=/anywhere")
    assert (user.pretrain.source_fit_frame, user.pretrain.source_resolution) == (False, None)


def test_the_default_experiment_and_the_smoke_profile_pass():
    check(params(), ROOT)
    check(params(profile="smoke"), ROOT)


def test_a_small_folder_is_told_the_splits_it_can_afford(twelve):
    message = stopped(params(f"data.target.path={twelve}"))
    assert message == (
        f"data.target: class '0' in {twelve} has 12 images, too few for 4 test + 10 val + "
        "10 train; e.g. --set data.target.val_per_class=4 --set data.target.labels_per_class=4"
    )
    fixed = params(
        f"data.target.path={twelve}",
        "data.target.val_per_class=4",
        "data.target.labels_per_class=4",
    )
    check(fixed, ROOT)


def test_the_validation_minimum_is_part_of_the_fix(tmp_path):
    """3 images a class (smoke: 1 test + 5 val + 5 train) also miss min_images_per_class 5."""
    few = folder(tmp_path / "few", 3, ("cat", "dog"))
    message = stopped(params(f"data.target.path={few}", profile="smoke"))
    assert message == (
        f"data.target: class 'cat' in {few} has 3 images, too few for 1 test + 5 val + 5 train; "
        "e.g. --set data.target.val_per_class=1 --set data.target.labels_per_class=1 "
        "--set validation.min_images_per_class=3"
    )
    only_minimum = params(
        f"data.target.path={few}", "data.target.val_per_class=1", "data.target.labels_per_class=1"
    )
    assert stopped(only_minimum).endswith(
        "has 3 images, fewer than validation.min_images_per_class (5) that validate requires; "
        "e.g. --set validation.min_images_per_class=3"
    )


def test_the_smallest_class_is_named_and_a_limit_is_said(tmp_path):
    message = stopped(params("data.target.limit=50"))  # uci-digits, 5 images a class
    assert message == (
        "data.target: class '0' of built-in uci-digits has 5 images after data.target.limit=50, "
        "too few for 2 test + 10 val + 10 train; e.g. --set data.target.val_per_class=1 "
        "--set data.target.labels_per_class=2 (or a larger data.target.limit)"
    )
    assert stopped(params("data.target.limit=10")).endswith(
        "has 1 image after data.target.limit=10, too few for 1 test + 10 val + 10 train; "
        "set a larger data.target.limit"
    )
    uneven = folder(tmp_path / "uneven", 30, ("a", "b"))
    for extra in range(30, 40):
        Image.new("L", (8, 8), extra).save(uneven / "a" / f"{extra}.png")
    for gone in range(9, 30):
        (uneven / "b" / f"{gone:02d}.png").unlink()
    assert stopped(params(f"data.target.path={uneven}")).startswith(
        f"data.target: class 'b' in {uneven} has 9 images"
    )


def test_the_source_budget_is_checked_too(twelve):
    message = stopped(params(f"data.source.path={twelve}", "data.source.val_per_class=11"))
    assert message.startswith(f"data.source: class '0' in {twelve} has 12 images")
    assert message.endswith(
        "too few for 1 test + 11 val + at least 1 train; e.g. --set data.source.val_per_class=10"
    )


@pytest.mark.parametrize("test_fraction", [0.1, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("val", [0, 1, 5, 10])
@pytest.mark.parametrize("labels", [None, 1, 5, 10])
def test_the_suggested_splits_fit_every_class_size(test_fraction, val, labels):
    spec = default_section(
        "data.target", test_fraction=test_fraction, val_per_class=val, labels_per_class=labels
    )
    for count in range(1, 40):
        changes = fitting_splits(count, spec)
        if count < 2:
            assert changes is None
            continue
        fixed = spec.model_copy(update=changes)
        assert affords(count, fixed), (count, changes)
        assert all(affords(n, fixed) for n in range(count, count + 30))  # larger classes too
        if affords(count, spec):
            assert changes == {}
        assert fixed.val_per_class <= val and (fixed.val_per_class > 0 or count < 3 or val == 0)


def test_a_missing_folder_is_named(tmp_path):
    message = stopped(params(f"data.target.path={tmp_path / 'nope'}"))
    assert message == (
        f"data.target.path: {tmp_path / 'nope'} does not exist; give an existing folder"
    )


def test_classes_outside_the_declared_label_space_are_named(twelve):
    message = stopped(
        params(
            f"data.target.path={twelve}",
            "data.target.classes=['0','1','2','3','4','5','6','7','8']",
        )
    )
    assert message.startswith(
        f"data.target.classes: classes '9' of data.target (folder {twelve}) are not among "
        "data.target.classes ['0', '1', '2', '3', '4', '5', '6', '7', '8']"
    )


def test_a_one_class_target_is_refused(tmp_path):
    single = folder(tmp_path / "single", 30, ("cat",))
    assert stopped(params(f"data.target.path={single}")).startswith(
        f"data.target (folder {single}) has images of one class ('cat'); a classifier needs "
        "at least two"
    )


def test_the_issue_one_class_target_is_refused_before_its_splits(tmp_path):
    """The issue's case: one class of 12 images, splits that fit it."""
    single = folder(tmp_path / "seven", 12, ("7",))
    sets = ("data.target.val_per_class=2", "data.target.labels_per_class=5")
    assert "has images of one class ('7')" in stopped(params(f"data.target.path={single}", *sets))


def test_declared_classes_without_images_still_leave_one_class(tmp_path):
    single = folder(tmp_path / "single", 30, ("cat",))
    message = stopped(params(f"data.target.path={single}", "data.target.classes=[cat,dog]"))
    assert message.startswith(f"data.target (folder {single}) has images of one class ('cat')")


def test_a_one_class_source_is_refused(tmp_path):
    single = folder(tmp_path / "single", 30, ("cat",))
    message = stopped(params(f"data.source.path={single}"))
    assert message.startswith(f"data.source (folder {single}) has images of one class")


@pytest.mark.parametrize(
    ("override", "start"),
    [
        (
            "model.arch=resnet10x",
            "model.arch: 'resnet10x' is not a timm architecture (did you mean resnet10t",
        ),
        (
            "model.arch=vit_tiny_patch16_224",
            "model.arch: timm vit_tiny_patch16_224 does not take 1-channel 32x32 px images",
        ),
        (
            "transfer.optimizer=adamz",
            "transfer.optimizer: 'adamz' is not an optimizer timm can create here",
        ),
        (
            "pretrain.optimizer=bnbadam8bit",
            "pretrain.optimizer: 'bnbadam8bit' is not an optimizer timm can create here",
        ),
        ("pretrain.scheduler=cosinez", "pretrain.scheduler: 'cosinez' is not a schedule"),
        ("transfer.scheduler=plateau", "transfer.scheduler: 'plateau' is not a schedule"),
        ("transfer.scheduler=none", "transfer.scheduler: 'none' is not a schedule"),
        ("data.source.path=/nonexistent", "data.source.path: /nonexistent does not exist"),
        ("pretrain.checkpoint=nowhere.safetensors", "pretrain.checkpoint: "),
    ],
)
def test_what_params_name_is_checked_against_timm_and_the_disk(override, start):
    assert stopped(params(override)).startswith(start)


def test_cuda_without_a_gpu_is_refused():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert stopped(params("base.device=cuda")).startswith(
        "base.device: cuda was asked for but this machine has no CUDA device"
    )


def test_an_unreadable_folder_is_named(tmp_path, monkeypatch):
    import os

    pets = folder(tmp_path / "pets", 30, ("cat", "dog"))
    pets.chmod(0)
    try:
        if os.access(pets, os.R_OK):  # root (CI): the kernel ignores the mode; answer as
            real = os.access  # access(2) does for any other user of a mode-0 folder
            monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and Path(p) != pets)
        assert stopped(params(f"data.target.path={pets}")) == (
            f"data.target.path: {pets} is not readable by this user; fix its permissions"
        )
    finally:
        pets.chmod(0o755)


def test_source_only_needs_the_target_classes_among_the_source_model_classes(tmp_path):
    pets = folder(tmp_path / "pets", 30, ("cat", "dog"))
    strategies = "transfer.strategies=[scratch,source_only,linear_probe]"
    message = stopped(params(f"data.target.path={pets}", strategies))
    assert message == (
        "transfer.strategies: source_only predicts the source model's classes, and data.target "
        f"(folder {pets}) has classes that data.source (built-in mnist5k) has not: 'cat', 'dog'; "
        "drop it, e.g. --set transfer.strategies=[scratch,linear_probe]"
    )
    check(params(strategies), ROOT)  # mnist5k -> uci-digits: the same ten digits
    subset = folder(tmp_path / "three", 30, ("1", "2", "3"))
    check(params(f"data.target.path={subset}", strategies), ROOT)  # among the source's


def test_keep_head_with_other_classes_is_no_error(tmp_path):
    """keep_head falls back to a fresh head when the classes differ: nothing to stop."""
    pets = folder(tmp_path / "pets", 30, ("cat", "dog"))
    check(params(f"data.target.path={pets}", "transfer.keep_head=true"), ROOT)


def test_bad_files_are_left_to_prepare_which_names_them_all(tmp_path):
    """A listing sees only some bad files (decoding finds the rest): prepare names them all in
    one message, so the pre-flight check does not count a folder that has them."""
    pets = folder(tmp_path / "pets", 3, ("cat", "dog"))
    (pets / "cat" / "notes.txt").write_text("x")
    check(params(f"data.target.path={pets}"), ROOT)


def test_tlp_run_stops_in_one_line_before_the_lock_or_prefect(twelve, tmp_path):
    """The observed case: 12 images a class stopped after Prefect's traceback; now one line,
    exit code 2, nothing written, Prefect not even imported."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    code = (
        "import sys\nfrom flows.cli import main\n"
        f"code = main(['-C', {str(project)!r}, 'run', '--set', 'data.target.path={twelve}'])\n"
        "print(code, 'prefect' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert done.stderr.splitlines() == [
        f"tlp: run stopped before any work: data.target: class '0' in {twelve} has 12 images, "
        "too few for 4 test + 10 val + 10 train; e.g. --set data.target.val_per_class=4 "
        "--set data.target.labels_per_class=4"
    ]
    assert sorted(p.name for p in project.iterdir()) == ["params.yaml"]  # no lock, no files


def test_auto_source_candidates_are_checked_and_source_only_is_left_to_the_run(tmp_path):
    """``transfer.source: auto`` picks the source at run time: its candidates get the flow's
    own cheap check now, and source_only's classes cannot be known yet."""
    auto = ["transfer.source=auto", "transfer.strategies=[scratch,source_only]"]
    missing = params(*auto, "rank.candidates=[{name: gone, path: no/such/folder}]")
    assert stopped(missing, tmp_path) == (
        f"rank.candidates: candidate 'gone': {tmp_path / 'no/such/folder'} not found "
        "(a .safetensors/.pth file or checkpoint folder)"
    )
    pets = folder(tmp_path / "pets", 30, ("cat", "dog"))
    check(params(*auto, f"data.target.path={pets}", "rank.candidates=[{pretrain: []}]"), tmp_path)


def test_what_timm_accepted_is_remembered_per_version(tmp_path):
    """`tlp params` twice with the same values imports timm once: the passes are kept in
    .tlp/feasible.json under timm's and torch's versions; other versions check again."""
    import json

    from tasks.stages.preflight import check_machine

    check_machine(params(), tmp_path)
    memory = tmp_path / ".tlp" / "feasible.json"
    saved = json.loads(memory.read_text())
    assert saved["versions"].startswith("timm ")
    assert "check_arch['resnet10t', 1, 32]" in saved["passed"]
    memory.write_text(json.dumps({"versions": "timm 0.0", "passed": ["check_optimizer['adamz']"]}))
    with pytest.raises(PreflightError, match="transfer.optimizer: 'adamz'"):
        check_machine(params("transfer.optimizer=adamz"), tmp_path)  # not trusted: old versions


def test_self_supervised_views_are_checked_at_the_resolved_image_size():
    """A null preprocess.image_size is filled from the checkpoint after params validate, so
    the views are checked again, here, at the size the run will use."""
    from tasks.stages.preflight import check_self_supervised

    p = params("pretrain.objective=simclr", "pretrain.ssl.crop_scale=[0.1,1.0]")  # 32 px: fine
    check_self_supervised(p)
    small = p.model_copy(update={"preprocess": p.preprocess.model_copy(update={"image_size": 8})})
    with pytest.raises(PreflightError, match=r"^pretrain.ssl.crop_scale: the smallest crop of a 8"):
        check_self_supervised(small)
