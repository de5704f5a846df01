"""`protege report`: a run directory with every stage's files -> report.html checked in headless Chromium
(every section and chart there, no console error, no network request, a real screenshot) and report.md.

The run directory is written here in the shapes the stages write (curate's stats.json and its charts drawn by
curate's own plot functions, the trainer's metrics.jsonl lines, eval's scores.json / answers / judgements per
notes/eval_contract.md). Chromium is driven over the DevTools protocol on `--remote-debugging-pipe`
(JSON messages on file descriptors 3 and 4), so no websocket client or browser driver is needed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from protege.curate.stats import plot_lengths, plot_verb_noun
from tests.conftest import run_cli

SECTION_IDS = ("headline", "data", "funnel", "training", "winrates", "ifeval", "cost", "examples")
NASTY = '<script>document.title="pwned"</script><img src="http://127.0.0.1:9/x.png">'  # must show as text
HEADLINE = "student wins or ties 62% [38%-88%] against the teacher on 8 held-out tasks, base 25% [0%-50%]"


def _jsonl(path: Path, rows: list[dict[str, Any]], torn: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn, encoding="utf-8")


def _example(i: int, **meta: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"Write a short poem about topic {i}."},
                         {"role": "assistant", "content": f"A poem about topic {i}."}],
            "meta": {"source": "self-instruct", "gen_id": f"g{i}", **meta}}


def _pair(a: str, b: str, n: int, win: float, tie: float) -> dict[str, Any]:
    loss = round(1 - win - tie, 4)
    return {"a": a, "b": b, "n": n, "win": win, "tie": tie, "loss": loss,
            "win_ci": [max(0, win - .25), min(1, win + .25)],
            "tie_ci": [max(0, tie - .12), min(1, tie + .12)], "loss_ci": [max(0, loss - .2), min(1, loss + .2)],
            "win_or_tie": win + tie, "win_or_tie_ci": [max(0, win + tie - .25), min(1, win + tie + .25)],
            "win_rate_ties_split": win + tie / 2, "win_rate_ties_split_ci": [0.3, 0.8], "inconsistent": 0.125,
            "mean_words_a": 41.5, "mean_words_b": 63.25, "warnings": ["the longer answer won 80% of decided pairs"]}


def write_run(run: Path) -> None:
    """A small but complete run directory, as generate, curate, train and eval leave it."""
    _jsonl(run / "generate" / "raw.jsonl", [_example(i) for i in range(14)])
    _jsonl(run / "generate" / "dropped.jsonl", [_example(20, drop_reason="empty answer"),
                                                _example(21, drop_reason="empty answer"),
                                                _example(22, drop_reason="truncated: the answer hit max_tokens")])
    _jsonl(run / "generate" / "failed.jsonl", [{"gen_id": "g30", "error": "timeout"}])
    _jsonl(run / "data" / "dropped.jsonl", [
        _example(3, dropped_by="near_duplicate", drop_reason="ROUGE-L 0.83 >= 0.7 with an earlier instruction"),
        _example(5, dropped_by="refusal", drop_reason="refusal or AI boilerplate: 'As an AI'")])
    stats_dir = run / "data" / "stats"
    stats_dir.mkdir(parents=True)
    plot_lengths([8, 9, 12, 7, 10, 11, 9, 8, 13, 10, 9, 12], [40, 52, 61, 38, 45, 70, 33, 48, 55, 49, 44, 60],
                 stats_dir / "lengths.png")
    pairs = Counter({("write", "poem"): 4, ("write", "story"): 2, ("explain", "concept"): 3, ("list", "item"): 2,
                     ("give", "example"): 1})
    plot_verb_noun(pairs, stats_dir / "verb_noun.png")
    stats = {"records": 12, "instruction_words": {"count": 12, "mean": 9.8, "median": 9.5, "p95": 12, "max": 13},
             "output_words": {"count": 12, "mean": 49.6, "median": 48.5, "p95": 61, "max": 70},
             "charts": {"lengths": "lengths.png", "verb_noun": "verb_noun.png"},
             "notes": ["12 instructions parsed; 12 have a root verb with a direct object"],
             "with_input": 3, "multi_turn": 0, "verb_noun_top": [[v, o, n] for (v, o), n in pairs.most_common()],
             "unique_verbs": 4,
             "curate": {"input_records": 14, "kept": 12, "dropped": 2,
                        "filters": [{"name": "empty", "settings": "", "in": 14, "dropped": 0},
                                    {"name": "refusal", "settings": "english patterns", "in": 14, "dropped": 1},
                                    {"name": "near_duplicate", "settings": "rouge_threshold=0.7", "in": 13,
                                     "dropped": 1}],
                        "splits": {"train": 8, "val": 2, "test": 2}}}
    (stats_dir / "stats.json").write_text(json.dumps(stats), encoding="utf-8")
    metrics = []
    for step in range(1, 21):  # the trainer's on_log lines: a training line per step, a validation line every 5
        metrics.append({"step": step, "epoch": round(step / 10, 4), "loss": round(2.4 * 0.95 ** step, 4),
                        "lr": 2e-4, "grad_norm": 1.3, "trained_tokens": 512 * step, "tokens": 600 * step,
                        "trained_tokens_per_s": 850.0, "elapsed_s": round(0.7 * step, 2), "tokens_per_s": 870.5})
        if step % 5 == 0:
            metrics.append({"step": step, "epoch": round(step / 10, 4), "eval_loss": round(2.5 * 0.97 ** step, 4),
                            "trained_tokens": 512 * step, "tokens": 600 * step, "trained_tokens_per_s": 850.0,
                            "elapsed_s": round(0.7 * step + 0.2, 2)})
    _jsonl(run / "student" / "metrics.jsonl", metrics, torn='{"step": 21, "epoch": 2.1, "lo')
    (run / "student" / "train_config.json").write_text(json.dumps(
        {"train": {"method": "lora", "epochs": 2, "max_steps": 20, "lr": 2e-4, "batch_size": 4, "max_seq_len": 512},
         "examples": 8}), encoding="utf-8")
    write_eval(run)
    (run / "manifest.json").write_text(json.dumps({"protege_version": "0.1.0", "created": "2025-01-01T00:00:00+00:00",
        "stages": {s: {"status": "ok", "seconds": sec, "finished": "2025-01-01T00:10:00+00:00"}
                   for s, sec in (("generate", 61.2), ("curate", 4.5), ("train", 15.1), ("eval", 95.0))},
        "artifacts": {}}), encoding="utf-8")


def write_eval(run: Path) -> None:
    models = {"teacher": "qwen2.5-coder-1.5b-instruct", "base": "smollm2-135m-instruct", "student": "student"}
    prompts = {f"t{i}": f"Explain idea number {i} in two sentences." for i in range(8)}
    for cand, model in models.items():
        _jsonl(run / "eval" / "answers" / f"test__{cand}.jsonl", [
            {"set": "test", "id": k, "candidate": cand, "model": model, "prompt": p,
             "answer": (NASTY if (cand, k) == ("base", "t0") else f"{cand} answers: idea {k} is simple.\nIt is clear."),
             "finish_reason": "stop", "hit_cap": cand == "base" and k == "t1", "completion_tokens": 14,
             "latency_s": 0.4, "cached": False} for k, p in prompts.items()])
    judgements = []
    for k in prompts:
        for a, b in (("student", "teacher"), ("student", "base"), ("base", "teacher")):
            judgements.append({"set": "test", "id": k, "a": a, "b": b, "winner": "a" if k in ("t0", "t2") else "tie",
                               "consistent": k != "t3", "first": "A", "second": "A",
                               "reasons": [f"{a} is more concise on {k}", "both are correct"],
                               "judge": "qwen2.5-coder-1.5b-instruct", "prompt_sha256": "ab" * 32})
    judgements.append({"set": "test", "id": "t0", "candidate": "student", "grade": 7, "rationale": "clear and correct",
                       "judge": "qwen2.5-coder-1.5b-instruct", "prompt_sha256": "cd" * 32})
    _jsonl(run / "eval" / "judgements.jsonl", judgements)
    cands = {c: {"model": m, "answers": 8, "hit_cap": int(c == "base"), "mean_words": 9.0,
                 "mean_completion_tokens": 14.0, "rougeL_vs_reference": None if c == "teacher" else 0.412,
                 "reference": None if c == "teacher" else "teacher", "grade_mean": None} for c, m in models.items()}
    ifeval = {c: {"prompt_strict": s, "prompt_loose": s + 0.1, "instruction_strict": s + 0.05,
                  "instruction_loose": s + 0.12, "n_prompts": 6, "n_instructions": 9, "n_unscored": 1,
                  "unscored": {"keywords:letter_frequency": 1}, "note": "lm-eval 0.4.13 IFEval checker, seed 0."}
              for c, s in (("teacher", 0.5), ("base", 1 / 6), ("student", 1 / 3))}
    scores = {"created": "2025-01-01T00:10:00+00:00", "protege_version": "0.1.0",
              "judge": {"kind": "llamacpp", "model": "qwen2.5-coder-1.5b-instruct",
                        "prompt_sha256": {"judge_pairwise": "ab" * 32, "judge_grade": "cd" * 32}},
              "headline": HEADLINE,
              "sets": [{"name": "test", "source": "run:data/test.jsonl", "format": "protege", "n": 8,
                        "candidates": cands, "ifeval": None,
                        "pairwise": [_pair("student", "teacher", 8, 0.25, 0.375),
                                     _pair("student", "base", 8, 0.5, 0.25),
                                     _pair("base", "teacher", 8, 0.125, 0.125)]},
                       {"name": "ifeval_sample", "source": "input_data.jsonl", "format": "ifeval", "n": 6,
                        "candidates": cands, "pairwise": [], "ifeval": ifeval}],
              "cost": {"student": {"model": "student", "params": 134515008, "disk_bytes": 269060381,
                                   "tokens_per_s": 38.5, "latency_p50_s": 0.41, "latency_p95_s": 0.77,
                                   "peak_memory_bytes": 1181116006, "usd_per_1k_requests": 0.0123,
                                   "price_basis": "self-hosted: eval.usd_per_hour x measured time"},
                       "teacher": {"model": "qwen2.5-coder-1.5b-instruct", "params": 1543714304,
                                   "disk_bytes": 1646572832, "tokens_per_s": 9.25, "latency_p50_s": 1.9,
                                   "latency_p95_s": 3.2, "peak_memory_bytes": 2254857830,
                                   "usd_per_1k_requests": 0.4321, "price_basis": "configured price"}}}
    (run / "eval" / "scores.json").write_text(json.dumps(scores), encoding="utf-8")


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "protege.yaml"
    cfg.write_text("run_dir: run\n", encoding="utf-8")
    return cfg


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    write_run(tmp / "run")
    proc = run_cli("report", "-c", str(_config(tmp)))
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout and "without data" not in proc.stdout
    return tmp / "run"


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: Counter[str] = Counter()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "poster", "data")]


def test_html_is_self_contained_and_escapes_the_data(full_run: Path) -> None:
    page = (full_run / "report.html").read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(page)
    assert refs.tags["script"] == 0 and refs.tags["link"] == 0 and refs.tags["iframe"] == 0
    assert all(r.startswith("data:image/png;base64,") or r.startswith("#") for r in refs.refs), refs.refs
    assert refs.tags["img"] == 5  # verb/noun + lengths (curate), funnel, loss, win/tie/loss (drawn here)
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in page
    assert HEADLINE.replace("&", "&amp;") in page


def test_markdown_has_the_numbers(full_run: Path) -> None:
    md = (full_run / "report.md").read_text(encoding="utf-8")
    for title in ("## Headline", "## Data", "## Filter funnel", "## Training", "## Win / tie / loss",
                  "## Instruction following (IFEval)", "## Cost and speed", "## Side-by-side examples"):
        assert title in md
    assert HEADLINE in md
    assert "| student vs teacher | 8 | 25.0% [0.0%, 50.0%] | 37.5% [25.5%, 49.5%] |" in md
    assert "| student | 33.3% | 43.3% | 38.3% | 45.3% | 6 | 9 | 1 |" in md   # IFEval row
    assert "| generated | 18 |" in md and "| after generation filters | 14 |" in md and "| kept | 12 |" in md
    assert "| empty answer | 2 |" in md and "| best validation loss | 2.1522 (step 5) |" not in md
    assert "| best validation loss | 1.3595 (step 20) |" in md
    assert "![verb_noun chart](data/stats/verb_noun.png)" in md
    assert "$0.0123" in md and "128.3 MiB" not in md and "256.6 MiB" in md
    assert "student vs teacher: student wins · student is more concise on t0 · both are correct" in md
    assert "student vs teacher: tie (the two orders disagreed: counted as a tie)" in md  # t3
    assert "grade of student: 7/10 · clear and correct" in md
    assert "1 unreadable line(s) in metrics.jsonl skipped" in md


def test_a_run_without_eval_still_gets_a_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_run(run)
    shutil.rmtree(run / "eval")
    proc = run_cli("report", "-c", str(_config(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert "sections without data yet: winrates, ifeval, cost, examples" in proc.stdout
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "No evaluation yet: run `protege eval -c FILE`" in md and "| kept | 12 |" in md
    assert json.loads((run / "manifest.json").read_text())["stages"]["report"]["status"] == "ok"


def test_missing_run_dir_and_broken_scores_exit_2(tmp_path: Path) -> None:
    proc = run_cli("report", "-c", str(_config(tmp_path)))
    assert proc.returncode == 2 and "no run directory" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "scores.json").write_text("{not json", encoding="utf-8")
    proc = run_cli("report", "-c", str(_config(tmp_path)))
    assert proc.returncode == 2 and "scores.json is not valid JSON" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "report.html").exists()


# ------------------------------------------------------------------------------------------------ Chromium


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3: commands in, fd 4: events out)."""

    def __init__(self, exe: str, profile: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1200,900"]

        def remap() -> None:  # in the child: our pipe ends become its fds 3 and 4 (copies first: a < b)
            a, b = os.dup(cmd_r), os.dup(evt_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        # close_fds=False keeps the inheritable 3 and 4 that dup2 made; every other pipe end is close-on-exec.
        self._log = (profile / "stderr.txt").open("wb")
        self.proc = subprocess.Popen([exe, *flags, "about:blank"], preexec_fn=remap, close_fds=False,
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        os.close(cmd_r)
        os.close(evt_w)
        self._next = 0
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._evt_r, 1 << 16):
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._replies[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.events.put(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        with self._cond:
            if not self._cond.wait_for(lambda: self._next in self._replies, timeout=timeout):
                raise TimeoutError(f"no reply to {method}")
            reply = self._replies.pop(self._next)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (TimeoutError, OSError, AssertionError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        self._reader.join(timeout=10)  # ends at EOF: the browser has exited
        os.close(self._evt_r)
        self._log.close()


def _load_page(exe: str, html: Path, profile: Path) -> tuple[dict[str, Any], bytes, list[dict[str, Any]]]:
    """Open the page; return (facts from the DOM, full-page PNG screenshot, every event the page sent)."""
    browser = Chromium(exe, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": html.as_uri()}, session=session)
        events, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            ev = browser.events.get(timeout=max(0.1, deadline - time.monotonic()))
            events.append(ev)
            if ev.get("method") == "Page.loadEventFired":
                break
        else:
            raise TimeoutError("the page never finished loading")
        time.sleep(0.5)  # anything the page would do after load
        while not browser.events.empty():
            events.append(browser.events.get())
        js = """JSON.stringify({
            sections: [...document.querySelectorAll('section')].map(s => [s.id, s.querySelector('h2').innerText]),
            images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
            text: document.body.innerText, title: document.title, scripts: document.scripts.length})"""
        facts = json.loads(browser.send("Runtime.evaluate", {"expression": js, "returnByValue": True},
                                        session=session)["result"]["value"])
        shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session)
        return facts, base64.b64decode(shot["data"]), events
    finally:
        browser.close()


@pytest.mark.slow
def test_report_in_headless_chromium(full_run: Path, tmp_path: Path) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")
    profile = tmp_path / "profile"
    profile.mkdir()
    facts, png, events = _load_page(exe, full_run / "report.html", profile)

    assert [s[0] for s in facts["sections"]] == list(SECTION_IDS)
    assert all(title for _, title in facts["sections"])
    alts = {alt for alt, *_ in facts["images"]}
    assert alts == {"verb_noun chart", "lengths chart", "filter funnel", "training and validation loss",
                    "win tie loss test"}
    for alt, complete, width, height in facts["images"]:
        assert complete and width > 200 and height > 100, (alt, width, height)  # decoded PNGs, not broken images
    assert facts["scripts"] == 0 and facts["title"] == "protege report: run"  # the answer's <script> stayed text
    assert NASTY in facts["text"] and HEADLINE in facts["text"]

    methods = Counter(e.get("method") for e in events)
    errors = [e for e in events if e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))]
    assert errors == [], errors
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    assert urls and urls[0] == (full_run / "report.html").as_uri(), methods
    assert [u for u in urls if not u.startswith(("file:", "data:"))] == [], urls  # no network request at all

    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width >= 1000 and image.height > 3000  # the whole page, not a blank tab
    (tmp_path / "report.png").write_bytes(png)
    colours = image.convert("RGB").resize((300, 300)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 200  # text, tables and charts, not an empty page
