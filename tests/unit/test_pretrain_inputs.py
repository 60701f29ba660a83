"""What the pretrain stage depends on (reports/pretrain_inputs.json, written by validate):
the source's validation outcome, and the target's identity only when the source is chosen
on the target (``transfer.source: auto``) or learnt partly from it (a self-supervised
``pretrain.objective``: its images or its kNN monitor)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tasks.core.context import Layout
from tasks.core.params import resolve_params
from tasks.data.manifest import MANIFEST
from tasks.stages.validate import pretrain_inputs

SUMMARY = {
    "source": {"success": True, "rows": 2000},
    "target": {"success": True, "rows": 1797},
    "domain_shift": {"ks_mean": 0.4},
}


def _ctx(project_root, tmp_path, *sets):
    params = resolve_params(project_root / "params.yaml", "smoke", list(sets))
    (tmp_path / "data" / "target").mkdir(parents=True, exist_ok=True)
    return SimpleNamespace(params=params, layout=Layout(tmp_path))


def test_the_target_is_not_an_input_of_pretrain(project_root, tmp_path):
    ctx = _ctx(project_root, tmp_path)
    assert pretrain_inputs(ctx, SUMMARY) == {"source": SUMMARY["source"]}
    other = {**SUMMARY, "target": {"success": True, "rows": 500}, "domain_shift": {}}
    assert pretrain_inputs(ctx, other) == pretrain_inputs(ctx, SUMMARY)


@pytest.mark.parametrize(
    "sets",
    [
        ("transfer.source=auto", "rank.candidates=[models:/a@b]"),
        ("pretrain.objective=simclr",),
    ],
    ids=["auto-source", "self-supervised"],
)
def test_when_pretrain_reads_the_target_its_manifest_is_an_input(project_root, tmp_path, sets):
    ctx = _ctx(project_root, tmp_path, *sets)
    manifest = tmp_path / "data" / "target" / MANIFEST
    manifest.write_bytes(b"one target")
    first = pretrain_inputs(ctx, SUMMARY)
    manifest.write_bytes(b"another target")
    second = pretrain_inputs(ctx, SUMMARY)
    assert first["source"] == second["source"]
    assert first["target_manifest_sha256"] != second["target_manifest_sha256"]
