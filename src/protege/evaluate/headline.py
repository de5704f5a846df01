"""The one line `protege eval` ends with, built from scores.json alone (parts not computed are left out):

"student wins or ties X% [CI] against the teacher on N held-out tasks, base Y% [CI];
 IFEval strict A vs B vs C; Z times cheaper per request" ("student win rate X% [CI] against the teacher ... (the
 judge's probabilities, both orders), base Y% [CI]" when the judge gave probabilities), or with only the base to compare with (the demo)
"student vs base on N held-out tasks: win rate X% [CI] (the judge's probabilities, both orders); ..."
Where the set has a judge check (its own answers judged against the base's), the judged part ends with whether the
judge passed it: a judge that cannot prefer the teacher's answers to the base's makes the win rate no evidence.
"""

from __future__ import annotations

from typing import Any

from protege.evaluate.cost import cheaper


def _pct(x: float | None, ci: list[float] | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.0%}" + (f" [{ci[0]:.0%}-{ci[1]:.0%}]" if ci else "")


def _find(pairs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    return next((p for p in pairs if p["a"] == a and p["b"] == b and p.get("n")), None)


def _judged(scores: dict[str, Any]) -> str | None:
    for s in scores["sets"]:
        pairs = s.get("pairwise") or []
        if not pairs:
            continue
        anchor = pairs[0]["a"]
        names = list(s["candidates"])
        target = "teacher" if "teacher" in names else next((b for p in pairs if (b := p["b"]) != "base"), None)
        first = _find(pairs, anchor, target) if target else None
        where_n = (first or _find(pairs, anchor, "base") or {}).get("n")
        where = f"{where_n} held-out tasks" if s["name"] == "test" else f"{where_n} prompts of {s['name']}"
        if first is None:  # only the base to compare with (e.g. the demo: student vs base)
            vs_base = _find(pairs, anchor, "base")
            if vs_base is None:
                continue
            return (f"{anchor} vs base on {where}: " + _rate(vs_base) + _rouge(s, anchor, "base") + _check(s))
        against = {"teacher": "the teacher", "reference": "the reference answers"}.get(target, target)
        base = _find(pairs, "base", target) if anchor != "base" else None
        if first.get("win_rate_weighted") is not None:
            text = (f"{anchor} win rate {_pct(first['win_rate_weighted'], first.get('win_rate_weighted_ci'))} "
                    f"against {against} on {where} (the judge's probabilities, both orders)")
            if base is not None and base.get("win_rate_weighted") is not None:
                text += f", base {_pct(base['win_rate_weighted'], base.get('win_rate_weighted_ci'))}"
            return text + _check(s)
        text = (f"{anchor} wins or ties {_pct(first['win_or_tie'], first['win_or_tie_ci'])} against {against} "
                f"on {where}")
        if base is not None:
            text += f", base {_pct(base['win_or_tie'], base['win_or_tie_ci'])}"
        return text + _check(s)
    return None


def _rate(pair: dict[str, Any]) -> str:
    """The pair's win rate: probability-weighted over both orders when the judge gave probabilities, else the hard
    verdicts' with ties split; then the hard verdicts' wins, ties and losses."""
    hard = f"wins {_pct(pair['win'])}, ties {_pct(pair['tie'])}, loses {_pct(pair['loss'])}"
    if pair.get("win_rate_weighted") is not None:
        return (f"win rate {_pct(pair['win_rate_weighted'], pair.get('win_rate_weighted_ci'))} (the judge's "
                f"probabilities, both orders); verdicts both orders agree on: {hard}")
    return f"{hard}; win rate with ties split {_pct(pair['win_rate_ties_split'], pair['win_rate_ties_split_ci'])}"


def _check(s: dict[str, Any]) -> str:
    """"; judge check passed/FAILED: ..." from the set's judge check (its own answers vs the base's), else ""."""
    c = s.get("judge_check")
    if not c or c.get("passed") is None:
        return ""
    if c["a"] != "reference":
        own = "the teacher's answers" if c["a"] == "teacher" else f"{c['a']}'s answers"
    else:
        own = "the held-out answers" if s["name"] == "test" else f"{s['name']}'s own answers"
    rate = _pct(c["check_rate"], c["check_ci"])
    if c["passed"]:
        return f"; judge check passed (it preferred {own} to the base's: {rate})"
    return (f"; judge check FAILED (it preferred {own} to the base's only {rate}): this judge cannot tell good "
            "answers from the base's here, so the win rate is no evidence either way")


def _rouge(s: dict[str, Any], a: str, b: str) -> str:
    """"; ROUGE-L to the reference answers: a X vs b Y" when both were scored, else ""."""
    cands = s.get("candidates") or {}
    x, y = ((cands.get(n) or {}).get("rougeL_vs_reference") for n in (a, b))
    if x is None or y is None:
        return ""
    ref = {"set answers": "the held-out answers"}.get(cands[a].get("reference"), cands[a].get("reference") or "reference")
    return f"; ROUGE-L to {ref}: {a} {x:.3f} vs {b} {y:.3f}"


def _ifeval(scores: dict[str, Any]) -> str | None:
    for s in scores["sets"]:
        if s.get("ifeval"):
            parts = [f"{name} {_pct(v.get('prompt_strict'))}" for name, v in s["ifeval"].items()]
            inst = [f"{v['instruction_strict']:.3f}" for v in s["ifeval"].values() if v.get("instruction_strict") is not None]
            return ("IFEval strict " + " vs ".join(parts)
                    + (f" (instruction-level {' vs '.join(inst)})" if len(inst) == len(parts) else ""))
    return None


def headline(scores: dict[str, Any]) -> str:
    """The headline of a scores.json dict."""
    parts = [p for p in (_judged(scores), _ifeval(scores)) if p]
    costs = scores.get("cost") or {}
    names = list(costs)
    student = "student" if "student" in costs else (names[0] if names else None)
    other = "teacher" if "teacher" in costs else None
    ratio = cheaper(costs, student, other) if student and other and student != other else None
    if ratio is not None:
        factor, basis = ratio
        parts.append(f"{factor:.1f} times cheaper per request ({basis})" if factor >= 1
                     else f"{1 / factor:.1f} times dearer per request ({basis})")
    if not parts:
        n = sum(s["n"] for s in scores["sets"])
        return f"answers written for {n} prompts; nothing was judged or scored (see scores.json notes)"
    return "; ".join(parts)
