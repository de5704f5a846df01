"""`protege chat MODEL`: talk to a student (or any model) in the terminal.

The answer streams as it is generated. The conversation is kept and sent with every turn through the
model's chat template; `/reset` forgets it, `/system TEXT` sets the system prompt (`/system` alone clears
it), `/exit` (or Ctrl-D) quits. Ctrl-C during an answer stops that answer (the model halts at the next
token and the partial answer stays in the history); Ctrl-C at the prompt just gives a fresh prompt.
After each answer a dim line gives the token counts, so the history's growth is visible.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from protege.ship.backends import Backend, ChatTemplateError, GenRequest, Generation

HELP = "/reset clears the history, /system TEXT sets the system prompt, /exit quits; Ctrl-C stops an answer."


class ChatSession:
    """The conversation and one turn of it; no terminal handling (that is `run`)."""

    def __init__(self, backend: Backend, *, system: str | None = None, max_tokens: int = 512,
                 temperature: float = 0.7, top_p: float = 1.0) -> None:
        self.backend = backend
        self.system = system
        self.history: list[dict[str, str]] = []
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p

    def messages(self, user: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": user}]

    def request(self, user: str) -> tuple[GenRequest, int]:
        """The request for this turn, dropping the oldest turns until it fits the context; (req, turns dropped)."""
        dropped = 0
        while True:
            prompt = self.backend.render_chat(self.messages(user))
            room = self.backend.context_length - self.backend.count_tokens(prompt)
            if room >= min(self.max_tokens, 64) or not self.history:
                break
            self.history = self.history[2:]
            dropped += 1
        if room < 1:
            raise ChatTemplateError(f"this message alone does not fit the model's context "
                                    f"({self.backend.context_length} tokens)")
        return GenRequest(prompt, min(self.max_tokens, room), self.temperature, self.top_p), dropped

    def answer(self, user: str, write: Callable[[str], None], cancel: threading.Event) -> tuple[str, Generation | None]:
        """Stream one answer through `write`; the (possibly partial) answer joins the history either way."""
        req, dropped = self.request(user)
        if dropped:
            write(f"(dropped the {dropped} oldest turn(s) to fit the context)\n")
        parts: list[str] = []
        final = None
        stream = self.backend.stream(req, cancel)
        try:
            for item in stream:
                if isinstance(item, Generation):
                    final = item
                else:
                    parts.append(item)
                    write(item)
        finally:
            stream.close()  # on Ctrl-C: stops the model and waits for its thread
            text = final.text if final is not None else "".join(parts)
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": text}]
        return text, final


def run(model: str, *, backend: str | None = None, base: str | None = None, system: str | None = None,
        max_tokens: int = 512, temperature: float = 0.7, n_ctx: int = 4096, n_threads: int | None = None,
        stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """The interactive loop (the stage function behind `protege chat`)."""
    from protege.ship.backends import open_backend

    out = stdout or sys.stdout
    inp = stdin or sys.stdin

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    dim = (lambda s: f"\x1b[2m{s}\x1b[0m") if out.isatty() else (lambda s: s)
    be, name = open_backend(model, backend=backend, base=base, max_batch=1, n_ctx=n_ctx, n_threads=n_threads,
                            say=lambda m: write(m + "\n"))
    session = ChatSession(be, system=system, max_tokens=max_tokens, temperature=temperature)
    if inp is sys.stdin and inp.isatty():
        try:
            import readline  # noqa: F401 - line editing and history for input()
        except ImportError:
            pass
    write(f"chatting with {name} ({be.kind}). {HELP}\n")
    try:
        while True:
            try:
                line = _read(inp, out, "you> ")
            except KeyboardInterrupt:
                write("\n")
                continue
            if line is None:
                write("\n")
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/exit", "/quit"):
                break
            if line == "/reset":
                session.history = []
                write("(history cleared)\n")
                continue
            if line == "/system" or line.startswith("/system "):
                session.system = line[len("/system"):].strip() or None
                write(f"(system prompt {'set' if session.system else 'cleared'})\n")
                continue
            if line.startswith("/"):
                write(f"unknown command {line.split()[0]}. {HELP}\n")
                continue
            _turn(session, line, write, dim)
    finally:
        be.close()


def _read(inp: TextIO, out: TextIO, prompt: str) -> str | None:
    if inp is sys.stdin and out is sys.stdout:
        try:
            return input(prompt)
        except EOFError:
            return None
    out.write(prompt)
    out.flush()
    line = inp.readline()
    return line if line else None


def _turn(session: ChatSession, line: str, write: Callable[[str], None], dim: Callable[[str], str]) -> None:
    cancel = threading.Event()
    t0 = time.perf_counter()
    write("bot> ")
    try:
        _, final = session.answer(line, write, cancel)
    except KeyboardInterrupt:
        cancel.set()
        write(" [stopped]\n")
        return
    except ChatTemplateError as e:  # raised before the turn joins the history
        write(f"\nerror: {e}\n")
        return
    secs = time.perf_counter() - t0
    if final is not None:
        rate = final.completion_tokens / secs if secs > 0 else 0.0
        write("\n" + dim(f"({final.completion_tokens} tokens, prompt {final.prompt_tokens} tokens, "
                         f"{rate:.1f} tok/s{', cut at max tokens' if final.finish_reason == 'length' else ''})") + "\n")
    else:
        write("\n")
