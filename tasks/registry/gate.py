"""The promotion gate: a candidate replaces the champion only when it is better on the *same*
frozen test examples with statistical support, so noise never moves ``@champion``.

Both registered versions are loaded as the pyfunc users get and scored on the test split of
the champion's own DVC-versioned target (tasks/registry/frozen_target.py), and only versions
of the same task are compared (tasks/registry/identity.py). The exact McNemar test looks
only at the examples where the two disagree: under "no difference" a disagreement favours
the candidate with probability 1/2, so the one-sided p-value is a binomial tail
(``scipy.stats.binomtest``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tasks.core.params import PromoteParams


@dataclass(frozen=True)
class GateResult:
    """What the gate decided and why; stored as version tags and in the alias event log."""

    promote: bool
    reason: str
    candidate_accuracy: float
    champion_accuracy: float | None
    p_value: float | None
    n: int
    candidate_only_correct: int = 0
    champion_only_correct: int = 0
    alpha: float = 0.05
    min_delta: float = 0.0
    min_accuracy: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    def tags(self, prefix: str = "gate") -> dict[str, str]:
        """Flat string tags for an MLflow model version."""
        out = {}
        for key, value in self.as_dict().items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, float):
                value = f"{value:.6g}"
            out[f"{prefix}.{key}"] = "none" if value is None else str(value)
        out[f"{prefix}.decision"] = "promote" if self.promote else "keep"
        out[f"{prefix}.test"] = "exact McNemar, one-sided"
        return out


def mcnemar_exact(
    candidate_correct: np.ndarray, champion_correct: np.ndarray
) -> tuple[float, int, int]:
    """One-sided exact McNemar p-value that the candidate is better, and the discordant counts."""
    from scipy.stats import binomtest

    cand = np.asarray(candidate_correct, dtype=bool)
    champ = np.asarray(champion_correct, dtype=bool)
    if cand.shape != champ.shape:
        raise ValueError(f"paired test needs the same examples: {cand.shape} vs {champ.shape}")
    b = int((cand & ~champ).sum())  # candidate right, champion wrong
    c = int((~cand & champ).sum())  # champion right, candidate wrong
    if b + c == 0:
        return 1.0, b, c
    return float(binomtest(b, b + c, 0.5, alternative="greater").pvalue), b, c


def decide(
    candidate_correct: np.ndarray,
    champion_correct: np.ndarray | None,
    rules: PromoteParams,
) -> GateResult:
    """Promote when accuracy >= min_accuracy, gain >= min_delta and McNemar p < alpha."""
    cand = np.asarray(candidate_correct, dtype=bool)
    n = int(cand.size)
    if n == 0:
        raise ValueError("the frozen test split is empty: nothing to compare on")
    acc = float(cand.mean())
    common = {
        "n": n,
        "alpha": rules.alpha,
        "min_delta": rules.min_delta,
        "min_accuracy": rules.min_accuracy,
    }
    if acc < rules.min_accuracy:
        reason = f"candidate accuracy {acc:.4f} is below the minimum {rules.min_accuracy:.4f}"
        champ_acc = None if champion_correct is None else float(np.mean(champion_correct))
        return GateResult(False, reason, acc, champ_acc, None, **common)
    if champion_correct is None:
        reason = f"no champion yet; accuracy {acc:.4f} meets the minimum {rules.min_accuracy:.4f}"
        return GateResult(True, reason, acc, None, None, **common)
    champ_acc = float(np.mean(champion_correct))
    p_value, b, c = mcnemar_exact(cand, champion_correct)
    delta = acc - champ_acc
    counts = {"candidate_only_correct": b, "champion_only_correct": c}
    if delta < rules.min_delta or delta <= 0:
        reason = f"gain {delta:+.4f} over the champion is below min_delta {rules.min_delta:.4f}"
        if delta <= 0 and rules.min_delta <= 0:
            reason = f"gain {delta:+.4f}: not better than the champion"
        return GateResult(False, reason, acc, champ_acc, p_value, **counts, **common)
    if p_value >= rules.alpha:
        reason = (
            f"gain {delta:+.4f} is not significant: McNemar p={p_value:.4g} >= alpha "
            f"{rules.alpha} ({b} vs {c} discordant)"
        )
        return GateResult(False, reason, acc, champ_acc, p_value, **counts, **common)
    reason = f"gain {delta:+.4f}, McNemar p={p_value:.4g} < alpha {rules.alpha}"
    return GateResult(True, reason, acc, champ_acc, p_value, **counts, **common)


@dataclass(frozen=True)
class TestSplit:
    """The frozen target test split: each image's encoded bytes, its manifest path (for
    messages) and its true class name."""

    images: list[bytes]
    names: list[str]
    classes: list[str]
    data_hash: str  # DVC hash of data/target when known, else "unknown"


def load_test_split(target_dir: Path, data_hash: str = "unknown") -> TestSplit:
    """The test rows of a prepared target, read from its shards (or, for data prepared before
    shards, a champion's ``images/`` files listed by the manifest)."""
    from tasks.data.manifest import read_manifest
    from tasks.data.shards import read_image_bytes

    manifest = read_manifest(target_dir)
    test = manifest[manifest["split"] == "test"]
    if test.empty:
        raise ValueError(f"{target_dir}: the manifest has no test rows")
    if "shard" in test.columns:
        images = read_image_bytes(target_dir, test)
    else:
        images = [(target_dir / p).read_bytes() for p in test["path"]]
    names = [str(p) for p in test["path"]]
    return TestSplit(images, names, [str(c) for c in test["class_name"]], data_hash)


def score_version(model_uri: str, split: TestSplit) -> np.ndarray:
    """Per-example correctness of a registered model, loaded exactly as users load it.

    The images are decoded here and passed as uint8 arrays, the input every served model
    takes (one that refuses file paths too), in the channels its card says it was trained on.
    The model is downloaded into a directory removed afterwards: ``load_model``'s default
    download directory is never cleaned, which left about 19 MB in /tmp per gate.
    """
    import tempfile

    import mlflow.pyfunc

    with tempfile.TemporaryDirectory(prefix="tlp-gate-") as download:
        model = mlflow.pyfunc.load_model(model_uri, dst_path=download)
        labels = model.predict(read_split(split, model))["label"].astype(str).tolist()
    return np.array([a == b for a, b in zip(labels, split.classes, strict=True)], dtype=bool)


def read_split(split: TestSplit, model) -> list[np.ndarray]:
    """The split's images as arrays, decoded as the model decodes them (its channels): a
    registered model reads no file paths (``model_inputs``)."""
    from tasks.data.preprocessing import decode_image

    preprocess = (model.metadata.metadata or {}).get("preprocess", {})
    channels = int(preprocess.get("channels") or 3)  # RGB when unknown: the model converts
    return [
        decode_image(data, channels, f"test image {name}")
        for data, name in zip(split.images, split.names, strict=True)
    ]


def gate_markdown(name: str, candidate: str, champion: str | None, result: GateResult) -> str:
    """The Prefect artifact a reviewer reads: decision, both scores, p-value and reason."""
    champ = f"version {champion}" if champion else "none"
    champ_acc = "n/a" if result.champion_accuracy is None else f"{result.champion_accuracy:.4f}"
    p = "n/a" if result.p_value is None else f"{result.p_value:.4g}"
    verdict = "PROMOTED" if result.promote else "NOT PROMOTED"
    return (
        f"## Promotion gate: {name} version {candidate} {verdict}\n\n"
        f"| | candidate (v{candidate}) | champion ({champ}) |\n|---|---|---|\n"
        f"| test accuracy | {result.candidate_accuracy:.4f} | {champ_acc} |\n\n"
        f"Exact McNemar (one-sided) on {result.n} frozen test examples: p = {p}; "
        f"discordant {result.candidate_only_correct} (candidate only) vs "
        f"{result.champion_only_correct} (champion only).\n\n"
        f"Rules: alpha {result.alpha}, min_delta {result.min_delta}, "
        f"min_accuracy {result.min_accuracy}.\n\n**Reason:** {result.reason}\n"
    )
