"""Bootstrap intervals: properties on known inputs (seeded), not hard-coded numbers."""

from __future__ import annotations

import numpy as np
import pytest

from protege.evaluate.stats import bootstrap_means, outcome_columns, rates


def _winners(n_win: int, n_tie: int, n_loss: int) -> list[str]:
    return ["a"] * n_win + ["tie"] * n_tie + ["b"] * n_loss


def test_ci_contains_point_estimate_and_stays_in_range() -> None:
    for w in (_winners(6, 3, 11), _winners(1, 0, 9), _winners(15, 5, 0)):
        r = rates(w, seed=3, resamples=500)
        for k in ("win", "tie", "loss", "win_or_tie", "win_rate_ties_split"):
            lo, hi = r[f"{k}_ci"]
            assert 0 <= lo <= r[k] <= hi <= 1, (k, r)
        assert r["win"] + r["tie"] + r["loss"] == pytest.approx(1)
        assert r["win_or_tie"] == pytest.approx(r["win"] + r["tie"])
        assert r["win_rate_ties_split"] == pytest.approx(r["win"] + r["tie"] / 2)


def test_ci_narrows_with_more_prompts() -> None:
    small = rates(_winners(6, 4, 10), seed=0, resamples=2000)  # same proportions, 20x the prompts
    big = rates(_winners(120, 80, 200), seed=0, resamples=2000)
    assert small["win"] == big["win"]
    width = lambda r: r["win_ci"][1] - r["win_ci"][0]  # noqa: E731
    assert width(big) < width(small) / 3  # ~sqrt(20) = 4.5 times narrower


def test_seeded_and_degenerate_cases() -> None:
    w = _winners(7, 2, 11)
    assert rates(w, seed=5) == rates(w, seed=5)
    draws = {tuple(rates(w, seed=s, resamples=200)["win_ci"]) for s in range(6)}
    assert len(draws) > 1  # the seed matters
    assert rates(_winners(5, 0, 0))["win_ci"] == [1.0, 1.0]  # no variation, no width
    empty = rates([])
    assert empty["n"] == 0 and empty["win"] is None and empty["win_ci"] is None


def test_bootstrap_matches_normal_approximation_roughly() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=300).astype(float)
    lo, hi = bootstrap_means({"x": x}, seed=2, resamples=4000)["x"]
    p, se = x.mean(), x.std() / np.sqrt(len(x))
    assert lo == pytest.approx(p - 1.96 * se, abs=0.015) and hi == pytest.approx(p + 1.96 * se, abs=0.015)


def test_columns_share_resamples_and_check_lengths() -> None:
    cols = outcome_columns(_winners(3, 3, 4))
    assert [sum(v) for v in (cols["win"], cols["tie"], cols["loss"])] == [3, 3, 4]
    with pytest.raises(ValueError):
        bootstrap_means({"a": [1, 0], "b": [1]})
