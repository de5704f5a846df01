"""Benchmark: can the judge tell the student from its base? Judge variants on a finished run's held-out pairs.

    python benchmarks/bench_judge.py RUN_DIR [--variant shipped closer no-reference graded] [--judge MODEL]

RUN_DIR is a run whose `protege eval` wrote `eval/answers/test__student.jsonl` and `test__base.jsonl` (e.g. a
`protege demo` run: DIR/run). Each variant asks the judge (default the offline teacher, llama.cpp in-process)
about every held-out pair and reports the student's probability-weighted preference over the base, its mean
over the pairs with a bootstrap 95% interval, and how many pairs lean each way:

- `shipped`: protege's reference-guided pairwise prompt (`prompts/judge_pairwise_ref.txt`), both orders, the
  verdict's probabilities averaged over the orders (what `protege eval` reports as the weighted win rate);
- `closer`: the same two orders, asking only which answer is closer to the reference (the held-out answer);
- `no-reference`: the pairwise prompt without the reference;
- `graded`: no pair at all: each answer graded 1-5 against the reference on its own (no position to be biased
  by); the preference is P(student's grade > base's) + half P(equal), from the two grade distributions;
- `graded-no-reference`: the same without the reference (usable for the sanity check below);
- `cot` / `cot-no-reference`: the pairwise question with the reasons first and the verdict on the last line
  (200 tokens; the probabilities read at that last verdict), with and without the reference;
- `yes` / `yes-no-reference`: no pair: each answer alone, "is it correct, complete and concise? Yes or No",
  P(Yes) at the first token; the preference is 0.5 + (P_student - P_base) / 2.

Besides the mean preference, each row gives the lean share (pairs leaning student, ties halved, over all pairs)
with its Wilson 95% interval.

`--teacher-vs-base` is the judge's sanity check: the held-out answers (the teacher's own) take the student's place,
so a judge worth its verdicts must prefer them to the base's; only `no-reference` makes sense there (the other
variants would show the judge the answer as its own reference); so do the other `-no-reference` variants.

Answers go to RUN_DIR/bench_judge.sqlite (a rerun asks nothing twice; the run's own call log is untouched).
Quality numbers are noisy benchmark results, never test assertions.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from protege import judge
from protege.config import TeacherConfig
from protege.prompts import judge as prompts
from protege.teachers import Request, complete_all

SAMPLING = {"temperature": 0.0, "max_tokens": 24, "logprobs": True, "top_logprobs": 10}
GRADE_SAMPLING = {**SAMPLING, "max_tokens": 12}
JUDGE_SYSTEM = ("You are an impartial judge comparing two AI assistants' answers to the same user request, with a "
                "reference answer to guide you.")
VERDICT_FORM = ("Reply in exactly this form, the verdict first:\nVerdict: <A, B or tie>\n"
                "Reason: <one short sentence>")
CLOSER = ("[User request]\n{instruction}\n\n[Reference answer]\n{reference}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n"
          "{answer_b}\n\nWhich answer is closer to the reference answer in what it says and in how long it is? An "
          "answer that repeats itself or does not stop is worse.\n" + VERDICT_FORM)
NO_REFERENCE = ("[User request]\n{instruction}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\nWhich answer "
                "follows the request better: correct, complete, and no longer than needed? An answer that repeats "
                "itself or does not stop is worse.\n" + VERDICT_FORM)
COT_FORM = ("First write two or three short sentences on what each answer gets right and wrong. Then, on the last "
            "line, give the verdict in exactly this form:\nVerdict: <A, B or tie>")
COT = ("[User request]\n{instruction}\n\n[Reference answer]\n{reference}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n"
       "{answer_b}\n\nUse the reference answer to check what a correct and complete answer contains. Which answer "
       "follows the request better: correct, complete, and no longer than needed? An answer that repeats itself or "
       "does not stop is worse.\n" + COT_FORM)
COT_NO_REFERENCE = ("[User request]\n{instruction}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\nWhich "
                    "answer follows the request better: correct, complete, and no longer than needed? An answer that "
                    "repeats itself or does not stop is worse.\n" + COT_FORM)
COT_SAMPLING = {**SAMPLING, "max_tokens": 200}
YES_SYSTEM = "You are a strict grader of AI assistants' answers."
YES_NO_REFERENCE = ("[Question]\n{instruction}\n\n[Assistant's answer]\n{answer}\n\nIs this a correct, complete and "
                    "concise answer to the question (not repetitive, not unfinished)? Reply Yes or No.")
YES = ("[Question]\n{instruction}\n\n[Reference answer]\n{reference}\n\n[Assistant's answer]\n{answer}\n\nJudged "
       "against the reference answer, is the assistant's answer correct, complete and concise (not repetitive, not "
       "unfinished)? Reply Yes or No.")
YES_SAMPLING = {**SAMPLING, "max_tokens": 1}
GRADER_SYSTEM = "You are a strict grader. You compare an assistant's answer with a reference answer written by an expert."
GRADED_NO_REFERENCE = ("[Question]\n{instruction}\n\n[Assistant's answer]\n{answer}\n\nHow good is the assistant's "
                       "answer? 1 = wrong, unrelated, repetitive or unfinished; 3 = partly right; 5 = correct, complete "
                       "and concise.\nReply with the score first:\nScore: <1-5>\nReason: <one short sentence>")
GRADER_NO_REFERENCE_SYSTEM = "You are a strict grader of AI assistants' answers."
GRADED = ("[Question]\n{instruction}\n\n[Reference answer]\n{reference}\n\n[Assistant's answer]\n{answer}\n\nHow good "
          "is the assistant's answer, judged against the reference answer? 1 = wrong, unrelated, repetitive or "
          "unfinished; 3 = partly right; 5 = as correct and complete as the reference.\nReply with the score first:\n"
          "Score: <1-5>\nReason: <one short sentence>")


def pairs(run: Path) -> list[dict[str, str]]:
    """The held-out prompts with the student's and the base's answers and the split's own (teacher) answer."""
    ans = {c: [json.loads(x) for x in (run / "eval" / "answers" / f"test__{c}.jsonl").read_text().splitlines()]
           for c in ("student", "base")}
    ref = {}
    for line in (run / "data" / "test.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        ref[next(m["content"] for m in msgs if m["role"] == "user")] = msgs[-1]["content"]
    return [{"instruction": s["prompt"], "student": s["answer"], "base": b["answer"], "reference": ref[s["prompt"]]}
            for s, b in zip(ans["student"], ans["base"]) if s["answer"] is not None and b["answer"] is not None]


def both_orders(items: list[dict[str, str]], variant: str) -> list[Request]:
    reqs = []
    for it in items:
        for x, y in ((it["student"], it["base"]), (it["base"], it["student"])):
            fields = {"instruction": it["instruction"], "answer_a": x, "answer_b": y, "reference": it["reference"]}
            if variant == "shipped":
                msgs = prompts.render("judge_pairwise_ref", **fields)
            elif variant.startswith("cot"):
                text = COT if variant == "cot" else COT_NO_REFERENCE
                msgs = [{"role": "system", "content": JUDGE_SYSTEM.split(",")[0] + "."},
                        {"role": "user", "content": text.format(**fields)}]
                reqs.append(Request(messages=msgs, sampling=COT_SAMPLING))
                continue
            else:
                system, text = ((JUDGE_SYSTEM, CLOSER) if variant == "closer"
                                else (JUDGE_SYSTEM.split(",")[0] + ".", NO_REFERENCE))
                msgs = [{"role": "system", "content": system}, {"role": "user", "content": text.format(**fields)}]
            reqs.append(Request(messages=msgs, sampling=SAMPLING))
    return reqs


def pairwise_preferences(results: list[Any]) -> tuple[list[float], list[str]]:
    prefs, hard = [], []
    for k in range(len(results) // 2):
        c1, c2 = results[2 * k].completion, results[2 * k + 1].completion
        q1 = judge.in_ab_terms(prompts.verdict_probs(c1.logprobs), a_first=True)
        q2 = judge.in_ab_terms(prompts.verdict_probs(c2.logprobs), a_first=False)
        p = judge.preference(q1, q2)
        prefs.append(0.5 if p is None else p)
        hard.append("".join((prompts.parse_pairwise(c.text) or ("?",))[0][0] for c in (c1, c2)))
    return prefs, hard


def grade_distribution(logprobs: list[list[Any]] | None) -> np.ndarray | None:
    """P(grade = 1..5) at the token after "Score:", or None."""
    if not logprobs:
        return None
    tokens = [str(t[0]) for t in logprobs]
    m = re.search(r"score\s*:\s*", "".join(tokens), re.IGNORECASE)
    if m is None:
        return None
    end = 0
    for k, tok in enumerate(tokens):
        end += len(tok)
        if end > m.end():
            break
    d = np.zeros(5)
    for tok, lp in logprobs[k][1].items():
        if tok.strip() in ("1", "2", "3", "4", "5"):
            d[int(tok.strip()) - 1] += math.exp(lp)
    return d / d.sum() if d.sum() >= 0.5 else None


def graded_preferences(items: list[dict[str, str]], cfg: TeacherConfig, db: Path,
                       reference: bool = True) -> tuple[list[float], list[str]]:
    system, text = (GRADER_SYSTEM, GRADED) if reference else (GRADER_NO_REFERENCE_SYSTEM, GRADED_NO_REFERENCE)
    reqs = [Request(messages=[{"role": "system", "content": system},
                              {"role": "user", "content": text.format(instruction=it["instruction"],
                                                                      reference=it["reference"], answer=it[c])}],
                    sampling=GRADE_SAMPLING) for it in items for c in ("student", "base")]
    res = complete_all(cfg, reqs, db)
    prefs, means = [], []
    for k in range(len(items)):
        ds, db_ = (grade_distribution(res[2 * k + j].completion.logprobs) for j in (0, 1))
        if ds is None or db_ is None:
            prefs.append(0.5)
            means.append("?")
            continue
        win = float(sum(ds[i] * db_[j] for i in range(5) for j in range(i)))
        prefs.append(win + float(ds @ db_) / 2)
        means.append(f"{ds @ np.arange(1, 6):.1f}/{db_ @ np.arange(1, 6):.1f}")
    return prefs, means


def yes_preferences(items: list[dict[str, str]], cfg: TeacherConfig, db: Path,
                    reference: bool = True) -> tuple[list[float], list[str]]:
    """Each answer alone: P(Yes) at the judge's first token; the student's preference 0.5 + (P_s - P_b) / 2."""
    text = YES if reference else YES_NO_REFERENCE
    reqs = [Request(messages=[{"role": "system", "content": YES_SYSTEM},
                              {"role": "user", "content": text.format(instruction=it["instruction"],
                                                                      reference=it["reference"], answer=it[c])}],
                    sampling=YES_SAMPLING) for it in items for c in ("student", "base")]
    res = complete_all(cfg, reqs, db)

    def p_yes(c: Any) -> float | None:
        if not c.logprobs:
            return None
        m = {"yes": 0.0, "no": 0.0}
        for tok, lp in c.logprobs[0][1].items():
            k = re.sub(r"[^a-z]", "", str(tok).lower())
            if k in m:
                m[k] += math.exp(lp)
        return m["yes"] / (m["yes"] + m["no"]) if m["yes"] + m["no"] >= 0.5 else None

    prefs, detail = [], []
    for k in range(len(items)):
        ps, pb = p_yes(res[2 * k].completion), p_yes(res[2 * k + 1].completion)
        prefs.append(0.5 if ps is None or pb is None else 0.5 + (ps - pb) / 2)
        detail.append("?" if ps is None or pb is None else f"{ps:.2f}/{pb:.2f}")
    return prefs, detail


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--variant", nargs="+", default=["shipped", "closer", "no-reference", "graded"],
                    choices=["shipped", "closer", "no-reference", "graded", "graded-no-reference", "cot", "cot-no-reference",
                             "yes", "yes-no-reference"])
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b-instruct", help="an offline GGUF model (llama.cpp)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher-vs-base", action="store_true",
                    help="the held-out (teacher's) answers in the student's place: the judge's sanity check")
    a = ap.parse_args()
    items = pairs(a.run_dir)
    if a.teacher_vs_base:
        items = [{**it, "student": it["reference"]} for it in items]
        if set(a.variant) - {"no-reference", "graded-no-reference", "cot-no-reference", "yes-no-reference"}:
            raise SystemExit("--teacher-vs-base: only the -no-reference variants (no-reference, graded-no-reference, "
                             "cot-no-reference, yes-no-reference) compare without showing the answer itself")
    cfg = TeacherConfig(kind="llamacpp", model=a.judge, n_threads=a.threads, n_ctx=4096)
    db = a.run_dir / "bench_judge.sqlite"
    print(f"{len(items)} held-out pairs from {a.run_dir}; judge {a.judge}"
          + ("; the teacher's answers in the student's place" if a.teacher_vs_base else ""))
    for variant in a.variant:
        t = time.time()
        if variant.startswith("yes"):
            prefs, detail = yes_preferences(items, cfg, db, reference=variant == "yes")
            what = "P(yes) student/base"
        elif variant.startswith("graded"):
            prefs, detail = graded_preferences(items, cfg, db, reference=variant == "graded")
            what = "expected grade student/base"
        else:
            prefs, detail = pairwise_preferences(complete_all(cfg, both_orders(items, variant), db))
            what = "verdicts (student first, base first; A = first slot)"
        x = np.asarray(prefs)
        idx = np.random.default_rng(0).integers(0, len(x), size=(2000, len(x)))
        lo, hi = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])
        wins, losses = int((x > 0.5).sum()), int((x < 0.5).sum())
        lean = wins + (len(x) - wins - losses) / 2
        wl, wh = wilson(lean, len(x))
        print(f"| {variant} | {len(x)} | {x.mean():.1%} [{lo:.1%}-{hi:.1%}] | {wins} / {losses} | "
              f"{lean / len(x):.0%} [{wl:.0%}-{wh:.0%}] | {time.time() - t:.0f} s |")
        print(f"    {what}: {' '.join(detail)}")


if __name__ == "__main__":
    main()
