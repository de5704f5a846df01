"""Candidates: who answers the eval sets, and their answers.

A candidate is a model that answers through the teachers' engine (`student`, `base`, `teacher`, any model
spec, any teacher-shaped block) or a set of answers written elsewhere (`reference`: the set's own answers;
a file of answers; an AlpacaEval `model_outputs.json`'s generator). Every model answers through
`teachers.complete_all`: batched by local backends, cached in the run's SQLite call log, so a rerun asks
nothing twice. Multi-turn items (MT-bench) ask turn k+1 after the candidate's own answer to turn k.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege import models
from protege.config import CandidateConfig, RunConfig, TeacherConfig
from protege.errors import UserError
from protege.evaluate import cost
from protege.evaluate.sets import EvalItem, EvalSet, load_file
from protege.store import RunStore
from protege.teachers import Request, complete_all

LOCAL_KINDS = ("hf", "llamacpp", "vllm")


@dataclass
class Candidate:
    """Who answers: a model (`teacher` set) or fixed answers (`answers_file`, or the set's own answers)."""

    name: str
    role: str  # student | base | teacher | model | reference
    model: str  # public id: never a path of this machine
    teacher: TeacherConfig | None = None
    answers_file: Path | None = None

    @property
    def is_model(self) -> bool:
        return self.teacher is not None

    @property
    def local(self) -> bool:
        return self.teacher is not None and self.teacher.kind in LOCAL_KINDS


@dataclass
class Answer:
    """One candidate's answer to one item (a list of turns for multi-turn items); `answer` None when it failed."""

    set: str
    id: str
    candidate: str
    model: str
    prompt: str | list[str]
    answer: str | list[str] | None
    finish_reason: str
    hit_cap: bool
    completion_tokens: int
    latency_s: float
    cached: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("set", "id", "candidate", "model", "prompt", "answer", "finish_reason",
                                              "hit_cap", "completion_tokens", "latency_s", "cached")}
        if self.error:
            out["error"] = self.error
        return out

    @property
    def text(self) -> str | None:
        """The answer as one text (turns joined), None when it failed."""
        if self.answer is None:
            return None
        return self.answer if isinstance(self.answer, str) else "\n\n".join(self.answer)


@dataclass
class Timing:
    """What generation cost on this machine: fresh (uncached) answers only."""

    fresh_requests: int = 0
    fresh_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    seconds: float = 0.0  # wall time from the first fresh request sent to the last answer received
    latencies: list[float] = field(default_factory=list)  # per request, cached ones as first measured
    peak_rss: int | None = None


# ------------------------------------------------------------------ resolving candidates


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:64] or "candidate"


def student_dir(store: RunStore) -> Path | None:
    """The trained student: the merged model when present, else the adapter."""
    for d in (store.merged_dir, store.adapter_dir):
        if d.is_dir():
            return d
    return None


def _spec_candidate(spec: str, batch: int) -> Candidate:
    ms = models.parse_spec(spec)  # UserError naming the accepted forms when the spec is none of them
    kind = "llamacpp" if ms.kind == "gguf" else "hf"
    name = {"named": ms.value, "hf": ms.value.split("/")[-1]}.get(ms.kind) or (ms.path.stem if ms.path else spec)
    return Candidate(_safe(name), "model", models.public_id(spec),
                     TeacherConfig(kind=kind, model=spec, max_concurrency=batch))


def _block_candidate(block: CandidateConfig) -> Candidate:
    data = block.model_dump()
    data.pop("name")
    tcfg = TeacherConfig(**data)
    model = tcfg.model if tcfg.kind == "openai" else models.public_id(tcfg.model)
    return Candidate(block.name, "model", model, tcfg)


def _file_candidate(path: Path) -> Candidate:
    if not path.is_file():
        raise UserError(f"eval candidate {path}: file not found",
                        hint="A candidate that is a file holds answers (AlpacaEval model_outputs.json, Alpaca "
                             "instruction/output records...); fix the path (relative to the config file).")
    s = load_file(path)
    name = next(iter(s.references)) if len(s.references) == 1 else path.stem
    return Candidate(_safe(name), "reference", name, answers_file=path)


def generator_candidates(s: EvalSet) -> list[Candidate]:
    """The reference candidates a set ships (AlpacaEval: one per generator), named after the generator."""
    return [Candidate(_safe(gen), "reference", gen) for gen in s.references]


def resolve(cfg: RunConfig, store: RunStore) -> list[Candidate]:
    """eval.candidates as Candidates, checked before anything runs (UserError for one that does not exist)."""
    batch = cfg.eval.batch_size
    out: list[Candidate] = []
    for c in cfg.eval.candidates:
        if isinstance(c, CandidateConfig):
            out.append(_block_candidate(c))
        elif c == "student":
            d = student_dir(store)
            if d is None:
                raise UserError(f"eval candidate student: no trained student in {store.student_dir} "
                                "(neither merged/ nor adapter/)",
                                hint="Run `protege train -c FILE` first, or drop student from eval.candidates.")
            out.append(Candidate("student", "student", models.public_id(str(d)),
                                 TeacherConfig(kind="hf", model=str(d), max_concurrency=batch)))
        elif c == "base":
            spec = cfg.student.model
            models.parse_spec(spec)
            out.append(Candidate("base", "base", models.public_id(spec),
                                 TeacherConfig(kind="hf", model=spec, max_concurrency=batch)))
        elif c == "teacher":
            if cfg.teacher is None:
                raise UserError("eval candidate teacher: the config has no teacher block",
                                hint="Add a teacher block, or drop teacher from eval.candidates.")
            t = cfg.teacher
            if t.kind != "openai":
                models.parse_spec(t.model)
            out.append(Candidate("teacher", "teacher", t.model if t.kind == "openai" else models.public_id(t.model),
                                 t))
        elif c == "reference":
            out.append(Candidate("reference", "reference", "the set's own answers"))
        elif Path(c).suffix.lower() in (".json", ".jsonl", ".parquet") or Path(c).is_file() and \
                not c.lower().endswith(".gguf"):
            out.append(_file_candidate(Path(c)))
        else:
            out.append(_spec_candidate(c, batch))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UserError(f"eval.candidates: two candidates are named {', '.join(dupes)}",
                        hint="Give one of them a block with its own name: {name: NAME, kind: hf, model: SPEC}.")
    return out


def judge_identity(tcfg: TeacherConfig) -> str:
    """The judge's public model id (compared with the candidates' to warn about self-preference)."""
    return tcfg.model if tcfg.kind == "openai" else models.public_id(tcfg.model)


# ------------------------------------------------------------------ answers


def _messages(item: EvalItem, answers: list[str], turn: int) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": item.system}] if item.system else []
    for k in range(turn):
        msgs += [{"role": "user", "content": item.turns[k]}, {"role": "assistant", "content": answers[k]}]
    return msgs + [{"role": "user", "content": item.turns[turn]}]


def generate(cand: Candidate, sets: list[EvalSet], cfg: RunConfig, store: RunStore,
             on_result: Callable[[Any], None] | None = None) -> tuple[dict[str, list[Answer]], Timing]:
    """The candidate's answers to every item of every set, through the engine (cached): {set name: answers}.

    One engine pass per turn over all sets together (the model loads once per turn, and prompts of
    different sets share batches); turn k+1 of a multi-turn item follows the candidate's own answer to turn k.
    """
    assert cand.teacher is not None
    sampling = {"temperature": cfg.eval.temperature, "max_tokens": cfg.eval.max_new_tokens}
    timing = Timing()
    units = [(s, it) for s in sets for it in s.items]
    turns: list[list[str]] = [[] for _ in units]
    meta = [{"tokens": 0, "latency": 0.0, "cached": True, "finish": "", "cap": False, "error": None} for _ in units]
    starts: list[float] = []
    ends: list[float] = []

    def seen(result: Any) -> None:
        if result.ok and not result.cached:
            now = time.perf_counter()
            starts.append(now - result.completion.latency_s)
            ends.append(now)
        if on_result is not None:
            on_result(result)

    cost.reset_peak_rss()
    for turn in range(max((len(it.turns) for _, it in units), default=0)):
        todo = [u for u, (_, it) in enumerate(units)
                if len(it.turns) > turn and meta[u]["error"] is None and len(turns[u]) == turn]
        if not todo:
            break
        reqs = [Request(messages=_messages(units[u][1], turns[u], turn), sampling=dict(sampling)) for u in todo]
        results = complete_all(cand.teacher, reqs, store.calls_db, on_result=seen)
        for u, r in zip(todo, results):
            m = meta[u]
            if r is None or not r.ok:
                m["error"] = (r.error if r is not None else None) or "not answered (the engine stopped)"
                continue
            c = r.completion
            turns[u].append(c.text)
            m["tokens"] += c.completion_tokens
            m["latency"] += c.latency_s
            m["cached"] = m["cached"] and r.cached
            m["finish"] = c.finish_reason or ""
            m["cap"] = m["cap"] or c.finish_reason == "length"
            timing.requests += 1
            timing.prompt_tokens += c.prompt_tokens
            timing.completion_tokens += c.completion_tokens
            timing.latencies.append(c.latency_s)
            if not r.cached:
                timing.fresh_requests += 1
                timing.fresh_tokens += c.completion_tokens
    if starts:
        timing.seconds = max(ends) - min(starts)
        timing.peak_rss = cost.peak_rss() if cand.local else None
    out: dict[str, list[Answer]] = {s.name: [] for s in sets}
    for u, (s, it) in enumerate(units):
        m = meta[u]
        ok = m["error"] is None and len(turns[u]) == len(it.turns)
        answer: str | list[str] | None = None
        if ok:
            answer = turns[u][0] if len(it.turns) == 1 else list(turns[u])
        out[s.name].append(Answer(s.name, it.id, cand.name, cand.model,
                                  it.turns[0] if len(it.turns) == 1 else list(it.turns), answer,
                                  m["finish"] if ok else "error", m["cap"], m["tokens"], round(m["latency"], 4),
                                  m["cached"], None if ok else (m["error"] or "not answered")))
    return out, timing


def fixed_answers(cand: Candidate, s: EvalSet) -> list[Answer] | None:
    """Answers a reference candidate gives to the set's items (matched by prompt text); None when it has none."""
    texts: list[Any]
    if cand.answers_file is not None:
        by_prompt = _answers_by_prompt(cand.answers_file)
        texts = [by_prompt.get(_norm(it.turns[0])) if len(it.turns) == 1 else None for it in s.items]
    elif cand.model in s.references:  # a generator's answers shipped with the set (AlpacaEval)
        texts = s.references[cand.model]
    elif cand.name == "reference":  # the set's own answers
        texts = [(it.reference[0] if len(it.turns) == 1 else list(it.reference)) if it.reference else None
                 for it in s.items]
    else:
        return None
    if not any(t is not None for t in texts):
        return None
    return [Answer(s.name, it.id, cand.name, cand.model, it.turns[0] if len(it.turns) == 1 else list(it.turns),
                   t, "reference" if t is not None else "missing", False, 0, 0.0, True,
                   None if t is not None else "no answer for this prompt in the reference")
            for it, t in zip(s.items, texts)]


def _norm(text: str) -> str:
    return " ".join(text.split())


def _answers_by_prompt(path: Path) -> dict[str, str]:
    s = load_file(path)
    out: dict[str, str] = {}
    if s.references:
        answers = next(iter(s.references.values()))
        for it, a in zip(s.items, answers):
            if a is not None:
                out[_norm(it.turns[0])] = a
        return out
    for it in s.items:
        if it.reference and len(it.turns) == 1:
            out[_norm(it.turns[0])] = it.reference[0]
    return out


def words(text: str | None) -> int:
    return len(text.split()) if text else 0


__all__ = ["Answer", "Candidate", "Timing", "fixed_answers", "generate", "judge_identity", "resolve", "student_dir",
           "words"]
