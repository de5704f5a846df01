"""`protege eval`: candidates answer the sets, a judge compares them, and the numbers go to eval/scores.json.

Order of work, so that a failure keeps everything already computed: check the sets, candidates and judge
(UserError before any model runs); generate every candidate's answers (cached in the call log) and write
eval/answers/<set>__<candidate>.jsonl; then judge (judgements.jsonl, appended set by set), score IFEval,
ROUGE-L and cost; last, scores.json and the headline. A rerun makes no model call: answers and verdicts
come from the call log.
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
    """Every candidate's answers to every set, each file written as soon as it is complete."""
    answers: dict[str, dict[str, list[Answer]]] = {}
    timings: dict[str, Timing] = {}
    for s in sets:
        answers[s.name] = {}
        for c in _set_candidates(cands, s):
            if c.is_model:
                total = sum(len(it.turns) for it in s.items)
                got, t = cands_mod.generate(c, s, cfg, store, bar(f"{s.name}: {c.name} answers", total))
                _merge(timings.setdefault(c.name, Timing()), t)
            else:
                fixed = cands_mod.fixed_answers(c, s)
                if fixed is None:
                    say(f"{s.name}: {c.name} has no answers for this set; left out")
                    continue
                got = fixed
            _write_jsonl(store.eval_answers(s.name, c.name), [a.to_dict() for a in got])
            answers[s.name][c.name] = got
            failed = [a for a in got if a.answer is None]
            if c.is_model and failed and len(failed) == len(got):
                raise UserError(f"eval: candidate {c.name} ({c.model}) answered none of the {len(got)} prompts of "
                                f"set {s.name}: {failed[0].error}",
                                hint="Check that the model or endpoint is reachable (answers of the other "
                                     "candidates are kept in eval/answers/ and the call log).")
            if failed and c.is_model:
                say(f"{s.name}: {c.name} failed on {len(failed)} of {len(got)} prompts ({failed[0].error})")
    return answers, timings


def _merge(into: Timing, t: Timing) -> None:
    into.fresh_requests += t.fresh_requests
    into.fresh_tokens += t.fresh_tokens
    into.prompt_tokens += t.prompt_tokens
    into.completion_tokens += t.completion_tokens
    into.requests += t.requests
    into.seconds += t.seconds
    into.latencies += t.latencies
    if t.peak_rss is not None:
        into.peak_rss = max(into.peak_rss or 0, t.peak_rss)


def _judge_set(cfg: RunConfig, store: RunStore, s: EvalSet, present: list[Candidate],
               answers: dict[str, list[Answer]], judge_cfg: Any, judge_id: str, bar: Any) -> list[dict[str, Any]]:
    """Judge every pair of the set (one engine pass for all pairs), append the lines, return the summaries."""
    by_name = {c.name: c for c in present}
    todo = pairwise.pairs(present)
    if not todo:
        return []
    n_calls = 2 * sum(sum(1 for x, y in zip(answers[a], answers[b]) if x.answer is not None and y.answer is not None)
                      for a, b in todo)
    tick = bar(f"{s.name}: judging {len(todo)} pair(s)", n_calls)
    out = []
    for a, b in todo:
        lines, unjudged, error = pairwise.judge_pair(s, a, b, answers, judge_cfg, store.calls_db,
                                                     cfg.eval.judge_max_tokens, judge_id, tick)
        with store.judgements.open("a", encoding="utf-8") as f:
            for ln in lines:
                f.write(json.dumps(ln, ensure_ascii=False) + "\n")
        if unjudged and not lines:
            raise UserError(f"eval: the judge ({judge_cfg.kind}: {judge_id}) could not judge {a} vs {b} on set "
                            f"{s.name}: {error}",
                            hint="Check that the judge is reachable (eval.judge, default the teacher). Answers "
                                 "are kept in eval/answers/; a rerun reuses them and every verdict already given.")
        out.append(pairwise.summarize(by_name[a], by_name[b], lines, unjudged, judge_id, cfg.eval.seed,
                                      cfg.eval.bootstrap))
    return out


def _grade_set(cfg: RunConfig, store: RunStore, s: EvalSet, answers: dict[str, list[Answer]], judge_cfg: Any,
               judge_id: str, bar: Any) -> dict[str, float | None]:
    """Single-answer grades 1-10 of every answer of the set; lines appended; {candidate: mean grade}."""
    keys = [(name, k) for name, got in answers.items() for k, a in enumerate(got) if a.answer is not None]
    items = [(pairwise.judge_prompt(s.items[k]), pairwise.judged_text(s.items[k], answers[name][k].answer))
             for name, k in keys]
    tick = bar(f"{s.name}: grading {len(items)} answers", len(items))
    ratings = judge.grade(items, judge_cfg, store.calls_db, max_tokens=cfg.eval.judge_max_tokens)
    for _ in ratings:  # judge.grade reports no per-answer progress: the bar completes when it returns
        tick(None)
    sha = judge.prompt_hashes()["judge_grade"]
    per: dict[str, list[int]] = {}
    with store.judgements.open("a", encoding="utf-8") as f:
        for (name, k), r in zip(keys, ratings):
            f.write(json.dumps({"set": s.name, "id": s.items[k].id, "candidate": name, "grade": r.score,
                                "rationale": r.reason or (r.error or ""), "judge": judge_id, "prompt_sha256": sha},
                               ensure_ascii=False) + "\n")
            if r.score is not None:
                per.setdefault(name, []).append(r.score)
    return {name: (round(sum(v) / len(v), 3) if (v := per.get(name)) else None) for name in answers}


def _judge(cfg: RunConfig) -> tuple[Any, str | None]:
    judge_cfg = cfg.eval.judge or cfg.teacher
    if judge_cfg is None:
        return None, None
    return judge_cfg, cands_mod.judge_identity(judge_cfg)  # UserError now for a judge model that does not exist


def run(cfg: RunConfig, store: RunStore, console: Console | None = None,
        say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate: answers, judgements, IFEval, ROUGE-L, cost; write scores.json, print the headline; return scores."""
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
            if store.judgements.exists():
                store.judgements.unlink()  # rewritten whole (verdicts come back from the call log)
            entries = []
            for s in sets:
                present = [c for c in _set_candidates(cands, s) if c.name in answers[s.name]]
                entry = metrics.set_entry(s, present, answers[s.name])
                if s.format == "ifeval":
                    entry["ifeval"], note = metrics.ifeval_scores(s, answers[s.name], cfg.eval.seed)
                    entry["notes"] += [note] if note else []
                elif judge_cfg is None:
                    entry["notes"].append("not judged: no judge (set eval.judge or a teacher block)")
                else:
                    entry["pairwise"] = _judge_set(cfg, store, s, present, answers[s.name], judge_cfg, judge_id, bar)
                if cfg.eval.grade and judge_cfg is not None:
                    for name, g in _grade_set(cfg, store, s, answers[s.name], judge_cfg, judge_id, bar).items():
                        entry["candidates"][name]["grade_mean"] = g
                entries.append(entry)
        model_cands = {c.name: c for c in cands if c.is_model}
        cost_table = {name: cost.entry(c, timings.get(name, Timing()), cfg, previous.get(name))
                      for name, c in model_cands.items()}
        scores = {
            "created": now_iso(), "protege_version": _version(),
            "judge": None if judge_cfg is None else {"kind": judge_cfg.kind, "model": judge_id,
                                                     "prompt_sha256": {k: v for k, v in judge.prompt_hashes().items()
                                                                       if k in ("judge_pairwise", "judge_grade")}},
            "settings": {"max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature,
                         "seed": cfg.eval.seed, "bootstrap": cfg.eval.bootstrap, "batch_size": cfg.eval.batch_size},
            "headline": "", "sets": entries, "cost": cost_table,
        }
        scores["headline"] = headline(scores)
        tmp = store.scores.with_name("scores.json.tmp")
        tmp.write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, store.scores)
        for path in sorted(store.eval_answers_dir.glob("*.jsonl")):
            store.record_artifact(path, "eval")
        for path in (store.judgements, store.scores):
            if path.exists():
                store.record_artifact(path, "eval")
        info.update(sets=[s.name for s in sets], candidates=[c.name for c in cands])
    for e in entries:
        for p in e["pairwise"]:
            for w in p["warnings"]:
                say(f"warning: {e['name']}: {p['a']} vs {p['b']}: {w}")
    return scores


def _version() -> str:
    from protege import __version__

    return __version__
