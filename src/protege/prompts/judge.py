"""The judge prompts (pointwise 1-5, pairwise A/B, single-answer 1-10) and their pure parsers.

Each prompt is a data file in this folder: the system message, a line `---`, the user message with
`{placeholders}`. `render_*` fill them in; `parse_*` read the judge's reply and return None when it holds
no verdict (the caller records that as unjudged, never as a guess). Parsers are tested on real replies.
"""

from __future__ import annotations

import math
import re

from protege.prompts import Template, load


def template(name: str) -> Template:
    """`judge_pointwise`, `judge_pairwise` or `judge_grade`."""
    return load(name)


def render(name: str, **fields: str) -> list[dict[str, str]]:
    """Chat messages of a judge prompt with its fields filled in."""
    system, _, user = template(name).text.partition("\n---\n")
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip().format(**fields)}]


_SCORE_RX = re.compile(r"(?:score|rating)\s*[:=]?\s*\**\s*([1-5])(?:\s*(?:/|out of)\s*5)?\b", re.IGNORECASE)
_LEAD_RX = re.compile(r"^\W*([1-5])(?:\s*(?:/|out of)\s*5)?\b")
_REASON_RX = re.compile(r"(?:reason|explanation|rationale)\s*\**\s*[:=]\s*\**\s*(.+)", re.IGNORECASE)


def _reason(text: str, cut: tuple[int, int] | None = None) -> str:
    r = _REASON_RX.search(text)
    if r:
        reason = r.group(1)
    elif cut:
        reason = text[: cut[0]] + " " + text[cut[1]:]
    else:
        reason = text
    return " ".join(reason.strip(" *\n\t.:").split())[:300]


def parse_score(text: str) -> tuple[int, str] | None:
    """(score 1..5, reason) of a pointwise reply, or None when it holds no score.

    Accepts `Score: 4`, `Rating: 4/5`, `**Score:** 4 out of 5` or a reply that starts with the number;
    the reason is the `Reason:` line, else the rest of the reply.
    """
    m = _SCORE_RX.search(text) or _LEAD_RX.search(text)
    if m is None:
        return None
    return int(m.group(1)), _reason(text, (m.start(), m.end()))


_VERDICT_RX = re.compile(r"verdict\s*\**\s*[:=]\s*\**\s*\[?\s*(answer\s+)?(A|B|tie)\b", re.IGNORECASE)
_BRACKET_RX = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)  # MT-bench style [[A]] / [[C]] = tie


def parse_pairwise(text: str) -> tuple[str, str] | None:
    """("A" | "B" | "tie", reason) of a pairwise reply, or None when it names no verdict.

    Reads `Verdict: A` (also `**Verdict:** Answer B`, `Verdict: tie`) and MT-bench's `[[A]]`/`[[B]]`/`[[C]]`;
    the last verdict wins when a reply restates itself.
    """
    found = list(_VERDICT_RX.finditer(text)) or list(_BRACKET_RX.finditer(text))
    if not found:
        return None
    m = found[-1]
    v = m.group(m.lastindex or 1).upper()
    verdict = {"A": "A", "B": "B", "TIE": "tie", "C": "tie"}[v]
    return verdict, _reason(text[: m.start()] + text[m.end():])


_CLASSES = {"a": "A", "b": "B", "tie": "tie", "c": "tie"}  # [[C]] is MT-bench's tie


def verdict_probs(logprobs: list[list[object]] | None, min_mass: float = 0.5) -> dict[str, float] | None:
    """{"A", "B", "tie"} -> probability the judge gave each verdict, read where it wrote the verdict; or None.

    `logprobs` is a completion's `[[token, {alternative: logprob}], ...]` (teachers.base.read_logprobs). The verdict
    is found as `parse_pairwise` finds it (the last one), in the text the tokens spell; the alternatives of the token
    that holds it are mapped to A, B or tie by their letters (" A", "A", "[[A" all read A; " tie" and "C" read tie)
    and renormalised. None when there are no logprobs, no verdict, or the alternatives that name a verdict hold
    less than `min_mass` of the probability (the judge was not choosing between verdicts there).
    """
    if not logprobs:
        return None
    tokens = [str(t[0]) for t in logprobs]
    text = "".join(tokens)
    found = list(_VERDICT_RX.finditer(text)) or list(_BRACKET_RX.finditer(text))
    if not found:
        return None
    m = found[-1]
    at = m.start(m.lastindex or 1)
    end = 0
    for k, tok in enumerate(tokens):
        end += len(tok)
        if end > at:
            break
    alts = logprobs[k][1] if isinstance(logprobs[k][1], dict) else {}
    mass = {"A": 0.0, "B": 0.0, "tie": 0.0}
    for tok, lp in alts.items():
        cls = _CLASSES.get(re.sub(r"[^a-z]", "", str(tok).lower()))
        if cls is not None:
            mass[cls] += math.exp(float(lp))
    total = sum(mass.values())
    if total < min_mass:
        return None
    return {c: v / total for c, v in mass.items()}


_RATING_RX = re.compile(r"(?:rating|score)\s*\**\s*[:=]?\s*\**\s*\[?\[?\s*(10|[1-9])(?:\.\d+)?\s*\]?\]?(?:\s*(?:/|out of)\s*10)?",
                        re.IGNORECASE)


def parse_grade(text: str) -> tuple[int, str] | None:
    """(rating 1..10, rationale) of a single-answer grading reply (MT-bench's `[[7]]` too), or None."""
    found = list(_RATING_RX.finditer(text)) or list(re.finditer(r"\[\[\s*(10|[1-9])\s*\]\]", text))
    if not found:
        return None
    m = found[-1]
    return int(m.group(1)), _reason(text[: m.start()] + text[m.end():])
