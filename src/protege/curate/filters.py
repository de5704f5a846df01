"""Quality filters: each one a stream function `Iterable[Example] -> Iterator[Example]`.

Every filter takes a `Drops` collector: a dropped record is copied with `meta.drop_reason`
(what happened, in words a person reads), `meta.dropped_by` (the filter's name) and any
details (the near-duplicate it matched and the score...), and goes to `data/dropped.jsonl`.
Records that pass are yielded unchanged, in order. No filter edits its input records.

`build_filters(cfg)` gives the configured chain, in the order the curate stage applies it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from protege.config import SUPPORTED_LANGUAGES as _CONFIG_LANGUAGES
from protege.config import CurateConfig
from protege.records import Example

Filter = Callable[[Iterable[Example]], Iterator[Example]]


class Drops:
    """Collects dropped records (copies with their reason) and counts per filter."""

    def __init__(self) -> None:
        self.records: list[Example] = []
        self.counts: Counter[str] = Counter()

    def __call__(self, ex: Example, by: str, reason: str, **details: Any) -> None:
        meta = {**ex.meta, "drop_reason": reason, "dropped_by": by, **details}
        self.records.append(Example(ex.messages, meta))
        self.counts[by] += 1


# ---------------------------------------------------------------- empty / truncated


def _finish_reasons(meta: dict[str, Any]) -> list[str]:
    """finish_reason(s) recorded by generate: `meta.finish_reason` (a string, or a list for
    multi-turn records), also looked up under `meta.teacher`."""
    found: list[str] = []
    for holder in (meta, meta.get("teacher") if isinstance(meta.get("teacher"), dict) else {}):
        value = holder.get("finish_reason", holder.get("finish_reasons"))
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, str)]
    return found


def empty_or_truncated(examples: Iterable[Example], drops: Drops) -> Iterator[Example]:
    """Drop records with no instruction, no or an empty reply, or a reply cut by the token
    limit (finish_reason "length"): a truncated answer teaches the student to stop mid-thought."""
    for ex in examples:
        if not ex.prompt.strip():
            drops(ex, "empty", "empty instruction")
        elif not any(m["role"] == "assistant" for m in ex.messages):
            drops(ex, "empty", "no assistant reply")
        elif any(m["role"] == "assistant" and not m["content"].strip() for m in ex.messages):
            drops(ex, "empty", "empty reply")
        elif "length" in _finish_reasons(ex.meta):
            drops(ex, "truncated", "reply truncated at the token limit (finish_reason=length)")
        else:
            yield ex


# ---------------------------------------------------------------- refusals / boilerplate

# Our own list. Anchored patterns look only at the reply's start (an apology letter that *says*
# "I'm sorry" is not a refusal); unanchored ones are assistant boilerplate anywhere.
REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\bas an? (ai|artificial intelligence)( language| text-based| large language)? (model|assistant)\b",
    r"\bas an? (large )?language model\b",
    r"\bi am an ai (language model|assistant|model)\b",
    r"\bi('m| am) (just )?an ai\b",
    r"\bi do(n't| not) have (personal )?(opinions|feelings|emotions|beliefs|preferences|"
    r"the ability to (browse|access|see|view|hear|perceive))\b",
    r"\b(my|the) knowledge cutoff\b",
    r"\bi (cannot|can't|am unable to|am not able to) (browse|access) the (internet|web)\b",
    r"\b(trained|developed|created) by openai\b",
    r"^\W*(i'?m|i am) (sorry|afraid),? (but )?(i|as an)\b",
    r"^\W*i apologi[sz]e,? (but )?(i|as an)\b",
    r"^\W*sorry,? (but )?i (can(no|')t|am unable|won't)\b",
    r"^\W*i (cannot|can't|can not|won't|will not|am unable to|am not able to) "
    r"(help|assist|comply|fulfill|provide|create|generate|complete|do|answer|write)\b",
    r"^\W*unfortunately,? (i|as an ai)\b",
    r"\bi('m| am) not (able|allowed|permitted) to (help|assist|provide|generate|create)\b",
    r"\bit is not (appropriate|ethical) for me to\b",
    r"\b(against|violates?) (my|openai'?s?) (content |usage )?(policy|policies|guidelines|programming)\b",
)


def refusals(examples: Iterable[Example], drops: Drops,
             patterns: Sequence[str] = REFUSAL_PATTERNS) -> Iterator[Example]:
    """Drop replies that refuse or carry "As an AI language model" boilerplate."""
    compiled = [re.compile(p, re.IGNORECASE) for p in patterns]
    for ex in examples:
        text = " ".join(m["content"].replace("\u2019", "'") for m in ex.messages
                        if m["role"] == "assistant")
        hit = next((m for m in (c.search(text) for c in compiled) if m), None)
        if hit:
            drops(ex, "refusal", f"refusal or AI boilerplate: {hit.group(0).strip()!r}")
        else:
            yield ex


# ---------------------------------------------------------------- length bounds


def length_bounds(examples: Iterable[Example], drops: Drops, min_words: int = 1,
                  max_words: int | None = None) -> Iterator[Example]:
    """Drop replies shorter than `min_words` or longer than `max_words` (whitespace words)."""
    for ex in examples:
        n = len(ex.output.split())
        if n < min_words:
            drops(ex, "length", f"reply has {n} words, fewer than min_output_words={min_words}")
        elif max_words is not None and n > max_words:
            drops(ex, "length", f"reply has {n} words, more than max_output_words={max_words}")
        else:
            yield ex


# ---------------------------------------------------------------- instruction blocklist

# Things a text-only model cannot do: self-instruct's list, plus photos and charts.
DEFAULT_BLOCKLIST: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
    "photo", "photos", "flow chart", "bar chart", "pie chart",
)


def blocklist(examples: Iterable[Example], drops: Drops,
              words: Sequence[str] = DEFAULT_BLOCKLIST) -> Iterator[Example]:
    """Drop records whose instruction mentions a blocklisted word or phrase (whole words)."""
    if not words:
        yield from examples
        return
    alt = "|".join(re.escape(w.strip()).replace(r"\ ", r"\s+") for w in words if w.strip())
    rx = re.compile(rf"(?<!\w)({alt})(?!\w)", re.IGNORECASE)
    for ex in examples:
        hit = rx.search(ex.instruction)
        if hit:
            drops(ex, "blocklist", f"instruction mentions blocklisted {hit.group(1).lower()!r}")
        else:
            yield ex


# ---------------------------------------------------------------- language (a heuristic)

# A light heuristic, not a language identifier: the writing system decides between scripts;
# within Latin script, counts of very common function words decide between a few languages.
# Texts too short to tell are kept. Good enough to catch a teacher switching language.
# No one-letter words: "a", "e", "o", "y" are in several languages and in formulas and lists.
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset("the an and or of to in is are was were be been for on with that this it as by "
                    "from at not your you what which how into about have has can will should each "
                    "all their they there these if do does its but so we our".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den mit von sich des auf für im dem "
                    "wie auch es sie ich wird oder sind".split()),
    "fr": frozenset("le la les et est un une des du de pas pour que qui dans sur au avec ce il "
                    "elle vous sont ou".split()),
    "es": frozenset("el la los las es un una de del que en por para con no se su al lo como "
                    "más está son".split()),
    "it": frozenset("il lo la gli le è un una di del che per con non si della sono come anche "
                    "nel alla".split()),
    "pt": frozenset("os as é um uma de do da que em para com não se por mais são como "
                    "na no".split()),
    "nl": frozenset("de het een en is van dat die niet op te in met voor zijn er ook aan als "
                    "maar wordt".split()),
}
_SCRIPTS: dict[str, tuple[tuple[int, int], ...]] = {
    "latin": ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F)),
    "cyrillic": ((0x400, 0x4FF),),
    "greek": ((0x370, 0x3FF),),
    "arabic": ((0x600, 0x6FF),),
    "hebrew": ((0x590, 0x5FF),),
    "devanagari": ((0x900, 0x97F),),
    "han": ((0x4E00, 0x9FFF), (0x3400, 0x4DBF)),
    "kana": ((0x3040, 0x30FF),),
    "hangul": ((0xAC00, 0xD7AF), (0x1100, 0x11FF)),
    "thai": ((0xE00, 0xE7F),),
}
_LANG_SCRIPT = {"en": "latin", "de": "latin", "fr": "latin", "es": "latin", "it": "latin",
                "pt": "latin", "nl": "latin", "ru": "cyrillic", "uk": "cyrillic", "el": "greek",
                "ar": "arabic", "he": "hebrew", "hi": "devanagari", "zh": "han", "ja": "kana",
                "ko": "hangul", "th": "thai"}
SUPPORTED_LANGUAGES = tuple(sorted(_LANG_SCRIPT))
assert SUPPORTED_LANGUAGES == _CONFIG_LANGUAGES, "config.SUPPORTED_LANGUAGES must list the same languages"
_LANG_NAMES = ("english", "french", "german", "spanish", "italian", "portuguese", "dutch",
               "russian", "chinese", "japanese", "korean", "arabic", "hindi", "greek", "hebrew")


_SCRIPT_RX = {name: re.compile("[" + "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges) + "]")
              for name, ranges in _SCRIPTS.items()}


def _script(text: str) -> str | None:
    """The writing system most of the letters of `text` (its first 2,000 characters) are in."""
    text = text[:2000]
    counts = Counter({name: len(rx.findall(text)) for name, rx in _SCRIPT_RX.items()})
    if counts["kana"] and counts["han"]:  # Japanese mixes kana and kanji
        counts["kana"] += counts.pop("han")
    name, n = counts.most_common(1)[0]
    return name if n else None


def guess_language(text: str, min_words: int = 4) -> str | None:
    """A best guess (ISO 639-1), or None when the text is too short or unclear to tell."""
    script = _script(text)
    if script is None:
        return None
    if script != "latin":
        return {"cyrillic": "ru", "greek": "el", "arabic": "ar", "hebrew": "he", "devanagari": "hi",
                "han": "zh", "kana": "ja", "hangul": "ko", "thai": "th"}[script]
    words = re.findall(r"[^\W\d_]+", text.lower())
    if len(words) < min_words:
        return None
    scores = {lang: sum(w in sw for w in words) for lang, sw in _STOPWORDS.items()}
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    (lang, best), (_, second) = ranked[0], ranked[1]
    # Decide only on clear evidence: 3+ function words, twice the runner-up's count.
    return lang if best >= 3 and best >= 2 * second else None


def _off_language(text: str, target: str) -> str | None:
    """The other language `text` seems to be in, or None when it looks like `target`/unclear."""
    guess = guess_language(text)
    if guess is None or guess == target:
        return None
    if _LANG_SCRIPT.get(guess) == _LANG_SCRIPT[target] and target not in _STOPWORDS:
        return None  # same script and no word list for the target: cannot tell
    if guess in ("zh", "ja") and target in ("zh", "ja"):
        return None
    return guess


def language(examples: Iterable[Example], drops: Drops, target: str) -> Iterator[Example]:
    """Drop records whose instruction, or reply, seems not to be in `target` (a heuristic).

    The reply is not checked when the instruction asks for translation or names a language,
    since its reply is then rightly in another language.
    """
    target = target.lower().split("-")[0]
    if target not in _LANG_SCRIPT:
        from protege.errors import UserError

        raise UserError(f"curate.language = {target!r}: the language heuristic knows "
                        f"{', '.join(SUPPORTED_LANGUAGES)}", hint="Set curate.language: null to skip it.")
    for ex in examples:
        other = _off_language(ex.instruction, target)
        where = "instruction"
        if other is None:
            low = ex.instruction.lower()
            if "translat" not in low and not any(n in low for n in _LANG_NAMES):
                other, where = _off_language(ex.output, target), "reply"
        if other is not None:
            drops(ex, "language", f"{where} looks like {other!r}, not {target!r} (heuristic)")
        else:
            yield ex


# ---------------------------------------------------------------- duplicates


def _field(ex: Example, name: str) -> str:
    return {"instruction": ex.instruction, "prompt": ex.prompt, "output": ex.output}[name]


def exact_duplicates(examples: Iterable[Example], drops: Drops) -> Iterator[Example]:
    """Drop records whose whole conversation equals an earlier one's after normalisation
    (case, whitespace, surrounding punctuation: `rouge.normalize`)."""
    from protege.rouge import normalize

    first: dict[tuple[str, ...], int] = {}
    for i, ex in enumerate(examples):
        key = tuple(f"{m['role']}:{normalize(m['content'])}" for m in ex.messages)
        j = first.setdefault(key, i)
        if j != i:
            drops(ex, "exact_duplicate", "same conversation as an earlier record (normalised)",
                  duplicate_of=j)
        else:
            yield ex


def near_duplicates(examples: Iterable[Example], drops: Drops, threshold: float = 0.7,
                    field: str = "instruction", references: Sequence[str] = ()) -> Iterator[Example]:
    """The self-instruct / Alpaca rule: drop a record whose `field` has ROUGE-L F > threshold
    against an earlier kept record's (exact scores, `rouge.dedup`). Records the matched text
    and score. Materialises the stream: the batch form is much faster than one by one."""
    from protege.rouge import dedup

    items = list(examples)
    result = dedup([_field(ex, field) for ex in items], threshold=threshold, references=references)
    dropped = {i: m for i, m in result.dropped}
    for i, ex in enumerate(items):
        m = dropped.get(i)
        if m is None:
            yield ex
            continue
        what = "reference" if m.reference else "kept record"
        drops(ex, "near_duplicate",
              f"{field} has ROUGE-L {m.score:.3f} > {threshold} with an earlier {what}",
              near_duplicate_of=m.text, rougeL=round(m.score, 6))


# ---------------------------------------------------------------- the chain


def build_filters(cfg: CurateConfig, drops: Drops) -> list[tuple[str, Filter]]:
    """The configured cheap filters, in order (decontamination and the judge are added by the
    stage, which owns their inputs)."""
    chain: list[tuple[str, Filter]] = [("empty/truncated", partial(empty_or_truncated, drops=drops))]
    if cfg.drop_refusals:
        chain.append(("refusal", partial(refusals, drops=drops)))
    chain.append(("length", partial(length_bounds, drops=drops, min_words=cfg.min_output_words,
                                    max_words=cfg.max_output_words)))
    words = DEFAULT_BLOCKLIST if cfg.blocklist is None else tuple(cfg.blocklist)
    if words:
        chain.append(("blocklist", partial(blocklist, drops=drops, words=words)))
    if cfg.language:
        chain.append(("language", partial(language, drops=drops, target=cfg.language)))
    chain.append(("exact_duplicate", partial(exact_duplicates, drops=drops)))
    return chain


def apply(examples: Iterable[Example], chain: Iterable[tuple[str, Filter]]) -> Iterator[Example]:
    """Compose filters left to right (lazy: records flow through one at a time)."""
    stream: Iterable[Example] = examples
    for _, f in chain:
        stream = f(stream)
    return iter(stream)


# ---------------------------------------------------------------- LLM judge (AlpaGasus-style)


def llm_judge(examples: Iterable[Example], drops: Drops, cfg: Any, threshold: int = 4,
              calls_db: Any = None) -> Iterator[Example]:
    """Rate each record 1..5 with a teacher-shaped judge (`cfg`: a TeacherConfig; `protege.judge.rate`); drop
    those below `threshold`, keep the rest with `meta.judge = {score, reason, model, prompt_sha256}`. A record
    the judge could not rate (failed call, no score in the reply) is kept and marked, since a failure says
    nothing about its quality."""
    from protege import judge

    items = list(examples)
    sha = judge.prompt_hashes()["judge_pointwise"]
    ratings = judge.rate([(ex.prompt, ex.output) for ex in items], cfg, calls_db)
    for ex, r in zip(items, ratings):
        if r.score is None:
            yield Example(ex.messages, {**ex.meta, "judge": {"score": None, "error": r.error, "model": cfg.model}})
            continue
        judged = {"score": r.score, "reason": r.reason, "model": cfg.model, "prompt_sha256": sha}
        if r.score < threshold:
            drops(ex, "llm_judge", f"judge score {r.score} < {threshold}: {r.reason}", judge=judged)
        else:
            yield Example(ex.messages, {**ex.meta, "judge": judged})
