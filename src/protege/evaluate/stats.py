"""Bootstrap confidence intervals over prompts (seeded), for win/tie/loss rates and means.

Percentile bootstrap: resample the prompts with replacement `resamples` times (numpy `default_rng(seed)`),
compute the statistic on each resample, take the 2.5th and 97.5th percentiles. All statistics of one pair
share the same resamples, so win + tie + loss = 1 holds in every resample. Hand-written because
`scipy.stats.bootstrap` would add scipy for ten lines of numpy, and it needs the statistics one at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def bootstrap_means(columns: Mapping[str, Sequence[float]], seed: int = 0, resamples: int = 2000,
                    level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """{name: (lo, hi)} percentile interval of the mean of each column (all of equal length n).

    None for every column when n == 0. Resample indices are drawn once and shared by all columns.
    """
    arrays = {k: np.asarray(v, dtype=float) for k, v in columns.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    if any(len(a) != n for a in arrays.values()):
        raise ValueError("bootstrap_means: columns differ in length")
    if n == 0:
        return {k: None for k in arrays}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    tail = (1 - level) / 2 * 100
    out: dict[str, tuple[float, float] | None] = {}
    for k, a in arrays.items():
        means = a[idx].mean(axis=1)
        lo, hi = np.percentile(means, [tail, 100 - tail])
        out[k] = (round(float(lo), 4), round(float(hi), 4))
    return out


def outcome_columns(winners: Sequence[str]) -> dict[str, list[float]]:
    """Per-prompt indicator columns from pairwise winners ("a", "b", "tie"), from a's side."""
    win = [1.0 if w == "a" else 0.0 for w in winners]
    tie = [1.0 if w == "tie" else 0.0 for w in winners]
    loss = [1.0 if w == "b" else 0.0 for w in winners]
    return {"win": win, "tie": tie, "loss": loss,
            "win_or_tie": [w + t for w, t in zip(win, tie)],
            "win_rate_ties_split": [w + t / 2 for w, t in zip(win, tie)]}


def rates(winners: Sequence[str], seed: int = 0, resamples: int = 2000) -> dict[str, object]:
    """Win/tie/loss rates of a over b with their bootstrap 95% intervals (the scores.json pairwise fields)."""
    cols = outcome_columns(winners)
    cis = bootstrap_means(cols, seed, resamples)
    out: dict[str, object] = {"n": len(winners)}
    for k, v in cols.items():
        out[k] = round(float(np.mean(v)), 4) if v else None
        out[f"{k}_ci"] = list(cis[k]) if cis[k] is not None else None
    return out
