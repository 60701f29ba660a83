"""The gate's statistics and rules on known paired outcomes (real scipy, no mocks)."""

import numpy as np
import pytest

from tasks.core.params import default_section
from tasks.registry.gate import decide, gate_markdown, mcnemar_exact

RULES = default_section("promote", alpha=0.05, min_delta=0.0, min_accuracy=0.5)


def paired(both: int, cand_only: int, champ_only: int, neither: int):
    """Correctness vectors with the given counts of each (candidate, champion) outcome."""
    cand = [1] * both + [1] * cand_only + [0] * champ_only + [0] * neither
    champ = [1] * both + [0] * cand_only + [1] * champ_only + [0] * neither
    return np.array(cand, bool), np.array(champ, bool)


def test_exact_mcnemar_is_the_binomial_tail_of_the_discordant_pairs():
    cand, champ = paired(80, 10, 0, 10)
    p, b, c = mcnemar_exact(cand, champ)
    assert (b, c) == (10, 0) and p == pytest.approx(0.5**10)
    cand, champ = paired(80, 6, 4, 10)
    p, _, _ = mcnemar_exact(cand, champ)
    assert p == pytest.approx(sum(__import__("math").comb(10, k) for k in range(6, 11)) / 2**10)


def test_clearly_better_candidate_is_promoted():
    result = decide(*paired(150, 30, 5, 15), RULES)
    assert result.promote and result.p_value < 0.001
    assert result.candidate_accuracy == pytest.approx(180 / 200)
    assert result.champion_accuracy == pytest.approx(155 / 200)
    assert result.tags()["gate.decision"] == "promote"


def test_equal_candidate_is_not_promoted():
    cand, _ = paired(150, 0, 0, 50)
    result = decide(cand, cand.copy(), RULES)
    assert not result.promote and result.p_value == 1.0 and "not better" in result.reason


def test_gain_within_noise_is_not_promoted():
    result = decide(*paired(150, 7, 4, 39), RULES)  # +1.5 points, 7 vs 4 discordant
    assert result.candidate_accuracy > result.champion_accuracy
    assert not result.promote and "not significant" in result.reason and result.p_value > 0.05


def test_worse_candidate_is_not_promoted():
    result = decide(*paired(150, 2, 20, 28), RULES)
    assert not result.promote and result.p_value > 0.5


def test_min_delta_and_absolute_minimum():
    strict = default_section("promote", alpha=0.05, min_delta=0.2, min_accuracy=0.5)
    result = decide(*paired(150, 30, 5, 15), strict)  # significant, but +12.5 points only
    assert not result.promote and "min_delta" in result.reason
    low = decide(*paired(40, 30, 0, 130), RULES)  # 35% accuracy beats 20%, significantly
    assert not low.promote and "below the minimum" in low.reason


def test_first_model_needs_only_the_absolute_minimum():
    cand, _ = paired(120, 0, 0, 80)
    assert decide(cand, None, RULES).promote
    assert not decide(cand, None, default_section("promote", min_accuracy=0.7)).promote


def test_paired_test_rejects_different_examples():
    with pytest.raises(ValueError, match="same examples"):
        mcnemar_exact(np.ones(5, bool), np.ones(6, bool))


def test_markdown_names_decision_scores_p_value_and_reason():
    result = decide(*paired(150, 30, 5, 15), RULES)
    text = gate_markdown("m", "2", "1", result)
    for needle in ("PROMOTED", "0.9000", "0.7750", "p = ", result.reason):
        assert needle in text
