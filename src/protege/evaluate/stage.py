"""`protege eval`: candidates answer the sets, a judge compares them, and the numbers go to eval/scores.json.

Order of work, so that a failure keeps everything already computed: check the sets, candidates and judge
(UserError before any model runs); generate every candidate's answers (cached in the call log) and write
eval/answers/<set>__<candidate>.jsonl; then judge (judgements.jsonl), score IFEval, ROUGE-L and cost;
last, scores.json and the headline. Each model runs once per turn over all sets together, and the judge
once over all pairs (a local model loads once per pass, and prompts of different sets share batches). A
rerun makes no model call: answers and verdicts come from the call log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from protege import judge
from protege.config import RunConfig
from protege.errors import UserError
from protege.evaluate import candidates as cands_mod
from protege.evaluate import cost, metrics, pairwise
from protege.evaluate.candidates import Answer, Candidate, Timing
from protege.evaluate.headline import headline
from protege.evaluate.sets import EvalSet, load_sets
from protege.store import RunStore, now_iso


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int], Callable[[Any], None]]]:
    """`bar(description, total)` -> a callback advancing that bar by one; Rich bars with ETA on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as progress:
        def bar(description: str, total: int) -> Callable[[Any], None]:
            task = progress.add_task(description, total=total)
            return lambda _result: progress.advance(task)

        yield bar


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)  # atomic: never half a file


def _previous_cost(store: RunStore) -> dict[str, Any]:
    try:
        return json.loads(store.scores.read_text(encoding="utf-8")).get("cost", {})
    except (OSError, ValueError):
        return {}


def _set_candidates(cands: list[Candidate], s: EvalSet) -> list[Candidate]:
    names = {c.name for c in cands}
    return cands + [g for g in cands_mod.generator_candidates(s) if g.name not in names]


def _answer_all(cfg: RunConfig, store: RunStore, sets: list[EvalSet], cands: list[Candidate], bar: Any,
                say: Callable[[str], None]) -> tuple[dict[str, dict[str, list[Answer]]], dict[str, Timing]]:
    """Every candidate's answers to every set: fixed answers first, then each model over all sets at once.

    Each file is written as soon as its answers are complete, so a failure later keeps them.
    """
    answers: dict[str, dict[str, list[Answer]]] = {s.name: {} for s in sets}
    timings: dict[str, Timing] = {}
    for s in sets:
        for c in _set_candidates(cands, s):
            if c.is_model:
                continue
            fixed = cands_mod.fixed_answers(c, s)
            if fixed is None:
                say(f"{s.name}: {c.name} has no answers for this set; left out")
                continue
            _write_jsonl(store.eval_answers(s.name, c.name), [a.to_dict() for a in fixed])
            answers[s.name][c.name] = fixed
    for c in cands:
        if not c.is_model:
            continue
        total = sum(len(it.turns) for s in sets for it in s.items)
        got, timings[c.name] = cands_mod.generate(c, sets, cfg, store, bar(f"{c.name} answers", total))
        for s in sets:
            _write_jsonl(store.eval_answers(s.name, c.name), [a.to_dict() for a in got[s.name]])
            answers[s.name][c.name] = got[s.name]
        failed = [a for s in sets for a in got[s.name] if a.answer is None]
        if failed and len(failed) == sum(len(v) for v in got.values()):
            raise UserError(f"eval: candidate {c.name} ({c.model}) answered none of the {len(failed)} prompts: "
                            f"{failed[0].error}",
                            hint="Check that the model or endpoint is reachable (answers of the other candidates "
                                 "are kept in eval/answers/ and the call log).")
        if failed:
            say(f"{c.name} failed on {len(failed)} prompts ({failed[0].error})")
    return answers, timings


def _judge_all(cfg: RunConfig, store: RunStore, judged: list[tuple[EvalSet, list[Candidate]]],
               answers: dict[str, dict[str, list[Answer]]], judge_cfg: Any, judge_id: str,
               bar: Any) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Judge every pair of every set, and the judge checks, in one engine pass; append the lines;
    ({set name: pairwise summaries}, {set name: judge check summary})."""
    by_set = {s.name: {c.name: c for c in present} for s, present in judged}
    jobs = [pairwise.PairJob(s, a, b, reference=pairwise.use_reference(by_set[s.name][a], by_set[s.name][b],
                                                                       cfg.eval.judge_reference))
            for s, present in judged for a, b in pairwise.pairs(present)]
    own = {s.name: got for s, present in judged
           if cfg.eval.judge_check and (got := pairwise.check_answers(s, present)) is not None}
    checks = [pairwise.PairJob(s, pairwise.CHECK, "base") for s, _ in judged if s.name in own]
    if not jobs:
        return {}, {}
    answers = {name: ({**got, pairwise.CHECK: own[name]} if name in own else got) for name, got in answers.items()}
    n_calls = 2 * sum(sum(1 for x, y in zip(answers[j.set.name][j.a], answers[j.set.name][j.b])
                          if x.answer is not None and y.answer is not None) for j in jobs + checks)
    pairwise.judge_pairs(jobs + checks, answers, judge_cfg, store.calls_db, cfg.eval.judge_max_tokens, judge_id,
                         bar(f"judging {len(jobs)} pair(s)" + (" and the judge check" if checks else ""), n_calls),
                         weighted=cfg.eval.judge_weighted)
    with store.judgements.open("a", encoding="utf-8") as f:
        for job in jobs + checks:
            for ln in job.lines:
                f.write(json.dumps(ln, ensure_ascii=False) + "\n")
    dead = next((j for j in jobs + checks if j.unjudged and not j.lines), None)
    if dead is not None:
        raise UserError(f"eval: the judge ({judge_cfg.kind}: {judge_id}) could not judge {dead.a} vs {dead.b} on "
                        f"set {dead.set.name}: {dead.error}",
                        hint="Check that the judge is reachable (eval.judge, default the teacher). Answers are "
                             "kept in eval/answers/; a rerun reuses them and every verdict already given.")
    out: dict[str, list[dict[str, Any]]] = {}
    for s, present in judged:
        by_name = {c.name: c for c in present}
        out[s.name] = [pairwise.summarize(by_name[j.a], by_name[j.b], j.lines, j.unjudged, judge_id, cfg.eval.seed,
                                          cfg.eval.bootstrap) for j in jobs if j.set is s]
    verdicts = {j.set.name: pairwise.check_verdict(pairwise.summarize(
        pairwise.OWN, by_set[j.set.name]["base"], j.lines, j.unjudged, judge_id, cfg.eval.seed, cfg.eval.bootstrap))
        for j in checks}
    for s, present in judged:  # no check of its own: a teacher or reference judged against the base is the check
        if s.name not in verdicts and (check := pairwise.check_from_pairs(out[s.name], present)) is not None:
            verdicts[s.name] = check
    return out, verdicts


def _grade_all(cfg: RunConfig, store: RunStore, sets: list[EvalSet], answers: dict[str, dict[str, list[Answer]]],
               judge_cfg: Any, judge_id: str, bar: Any) -> dict[str, dict[str, float | None]]:
    """Single-answer grades 1-10 of every answer (one engine pass); lines appended; {set: {candidate: mean}}."""
    keys = [(s, name, k) for s in sets for name, got in answers[s.name].items()
            for k, a in enumerate(got) if a.answer is not None]
    items = [(pairwise.judge_prompt(s.items[k]), pairwise.judged_text(s.items[k], answers[s.name][name][k].answer))
             for s, name, k in keys]
    tick = bar(f"grading {len(items)} answers", len(items))
    ratings = judge.grade(items, judge_cfg, store.calls_db, max_tokens=cfg.eval.judge_max_tokens)
    for _ in ratings:  # judge.grade reports no per-answer progress: the bar completes when it returns
        tick(None)
    sha = judge.prompt_hashes()["judge_grade"]
    per: dict[tuple[str, str], list[int]] = {}
    with store.judgements.open("a", encoding="utf-8") as f:
        for (s, name, k), r in zip(keys, ratings):
            f.write(json.dumps({"set": s.name, "id": s.items[k].id, "candidate": name, "grade": r.score,
                                "rationale": r.reason or (r.error or ""), "judge": judge_id, "prompt_sha256": sha},
                               ensure_ascii=False) + "\n")
            if r.score is not None:
                per.setdefault((s.name, name), []).append(r.score)
    return {s.name: {name: (round(sum(v) / len(v), 3) if (v := per.get((s.name, name))) else None)
                     for name in answers[s.name]} for s in sets}


def _judge(cfg: RunConfig) -> tuple[Any, str | None]:
    judge_cfg = cfg.eval.judge or cfg.teacher
    if judge_cfg is None:
        return None, None
    return judge_cfg, cands_mod.judge_identity(judge_cfg)  # UserError now for a judge model that does not exist


def run(cfg: RunConfig, store: RunStore, console: Console | None = None,
        say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate: answers, judgements, IFEval, ROUGE-L, cost; write scores.json; return the scores."""
    console = console or Console(stderr=True)
    say = say or (lambda m: console.print(m, markup=False, highlight=False))
    with store.stage("eval", cfg.hash()) as info:
        sets = load_sets(cfg, store)
        cands = cands_mod.resolve(cfg, store)
        judge_cfg, judge_id = _judge(cfg)
        store.ensure(store.eval_dir, store.eval_answers_dir)
        previous = _previous_cost(store)
        with _progress(console) as bar:
            answers, timings = _answer_all(cfg, store, sets, cands, bar, say)
            present = {s.name: [c for c in _set_candidates(cands, s) if c.name in answers[s.name]] for s in sets}
            entries = {s.name: metrics.set_entry(s, present[s.name], answers[s.name]) for s in sets}
            for s in sets:
                if s.format == "ifeval":  # scored by the checker, not judged
                    entries[s.name]["ifeval"], note = metrics.ifeval_scores(s, answers[s.name], cfg.eval.seed)
                    entries[s.name]["notes"] += [note] if note else []
                elif judge_cfg is None:
                    entries[s.name]["notes"].append("not judged: no judge (set eval.judge or a teacher block)")
            if store.judgements.exists():
                store.judgements.unlink()  # rewritten whole (verdicts come back from the call log)
            if judge_cfg is not None:
                judged = [(s, present[s.name]) for s in sets if s.format != "ifeval"]
                summaries, checks = _judge_all(cfg, store, judged, answers, judge_cfg, judge_id, bar)
                for name, pairs in summaries.items():
                    entries[name]["pairwise"] = pairs
                for name, check in checks.items():
                    entries[name]["judge_check"] = check
                if cfg.eval.grade:
                    for name, grades in _grade_all(cfg, store, sets, answers, judge_cfg, judge_id, bar).items():
                        for cand, g in grades.items():
                            entries[name]["candidates"][cand]["grade_mean"] = g
        cost_table = {c.name: cost.entry(c, timings.get(c.name, Timing()), cfg, previous.get(c.name))
                      for c in cands if c.is_model}
        scores = {
            "created": now_iso(), "protege_version": _version(),
            "judge": None if judge_cfg is None else {
                "kind": judge_cfg.kind, "model": judge_id, "reference_guided": cfg.eval.judge_reference,
                "prompt_sha256": {k: v for k, v in judge.prompt_hashes().items() if k != "judge_pointwise"}},
            "settings": {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature,
                         "seed": cfg.eval.seed, "bootstrap": cfg.eval.bootstrap, "batch_size": cfg.eval.batch_size},
            "headline": "", "sets": list(entries.values()), "cost": cost_table,
        }
        scores["headline"] = headline(scores)
        tmp = store.scores.with_name("scores.json.tmp")
        tmp.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, store.scores)
        for path in [*sorted(store.eval_answers_dir.glob("*.jsonl")), store.judgements, store.scores]:
            if path.exists():
                store.record_artifact(path, "eval")
        info.update(sets=[s.name for s in sets], candidates=[c.name for c in cands])
    for e in scores["sets"]:
        for p in e["pairwise"] + ([e["judge_check"]] if e.get("judge_check") else []):
            for w in p["warnings"]:
                say(f"warning: {e['name']}: {p['a']} vs {p['b']}: {w}")
    return scores


def _version() -> str:
    from protege import __version__

    return __version__
