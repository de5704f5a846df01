"""Per-set numbers that need no judge: answer counts and lengths, answers cut at the cap, ROUGE-L against a
reference, and IFEval accuracy (through `evaluate/ifeval.py`, lm-eval's checker)."""

from __future__ import annotations

from typing import Any

from protege import rouge
from protege.evaluate.candidates import Answer, Candidate, words
from protege.evaluate.sets import EvalSet


def rouge_reference(s: EvalSet, present: list[Candidate], answers: dict[str, list[Answer]]
                    ) -> tuple[str | None, list[str | None]]:
    """(name, texts) of the answers ROUGE-L compares against, first found of: answers shipped with the set
    (AlpacaEval's generator), a reference file, the teacher, the set's own answers (test split outputs...)."""
    order = ([c for c in present if c.role == "reference" and c.model in s.references]
             + [c for c in present if c.role == "reference" and c.answers_file is not None]
             + [c for c in present if c.role == "teacher"]
             + [c for c in present if c.name == "reference"])
    for c in order:
        return c.name, [a.text for a in answers[c.name]]
    if s.has_own_answers:
        return "set answers", ["\n\n".join(it.reference) if it.reference else None for it in s.items]
    return None, [None] * len(s.items)


def mean_rouge_l(texts: list[str | None], refs: list[str | None]) -> float | None:
    """Mean exact ROUGE-L F (rouge-score's tokenizer, no stemming) over items where both texts exist."""
    scores = [rouge.rougeL_f(rouge.tokenize(t), rouge.tokenize(r)) for t, r in zip(texts, refs)
              if t is not None and r is not None]
    return round(sum(scores) / len(scores), 4) if scores else None


def set_entry(s: EvalSet, present: list[Candidate], answers: dict[str, list[Answer]]) -> dict[str, Any]:
    """The scores.json entry of a set, before judging: per-candidate counts, lengths and ROUGE-L."""
    ref_name, refs = rouge_reference(s, present, answers)
    per: dict[str, Any] = {}
    for c in present:
        got = answers[c.name]
        ok = [a for a in got if a.answer is not None]
        n = len(ok)
        per[c.name] = {
            "model": c.model, "answers": n, "failed": len(got) - n, "hit_cap": sum(1 for a in ok if a.hit_cap),
            "mean_words": round(sum(words(a.text) for a in ok) / n, 2) if n else None,
            "mean_completion_tokens": round(sum(a.completion_tokens for a in ok) / n, 2) if n and c.is_model else None,
            "rougeL_vs_reference": None if c.name == ref_name else mean_rouge_l([a.text for a in got], refs),
            "reference": None if c.name == ref_name else ref_name,
            "grade_mean": None,
        }
    return {"name": s.name, "source": s.source, "format": s.format, "n": len(s.items), "candidates": per,
            "pairwise": [], "judge_check": None, "ifeval": None, "notes": []}


def ifeval_scores(s: EvalSet, answers: dict[str, list[Answer]], seed: int
                  ) -> tuple[dict[str, Any] | None, str | None]:
    """({candidate: IFEval accuracies}, None), or (None, why not) when the checker cannot run here."""
    try:
        from protege.evaluate import ifeval
    except ImportError:
        return None, "IFEval not scored: protege.evaluate.ifeval is missing from this install"
    why = ifeval.available()
    if why:
        return None, f"IFEval not scored: {why}"
    out: dict[str, Any] = {}
    for name, got in answers.items():
        rows = [(it.row, a.text) for it, a in zip(s.items, got) if a.answer is not None and it.row is not None]
        if rows:
            scored = ifeval.score([r for r, _ in rows], [t or "" for _, t in rows], seed=seed)
            out[name] = {k: v for k, v in scored.items() if k != "per_prompt"}
    return out, None
