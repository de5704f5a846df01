"""`protege chat` driven through a pseudo-terminal, as a person would use it: typed lines in, streamed text
out, the history growing turn by turn, /reset forgetting it, Ctrl-C stopping an answer but not the program."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import time

import pytest

from tests.ship.conftest import REPO, STUDENT

pytestmark = pytest.mark.slow

STATS = re.compile(r"\((\d+) tokens, prompt (\d+) tokens")


class Terminal:
    """A child process on a pty; `expect` reads until a pattern, keeping each read with its time."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the real CLI
            os.chdir(REPO)
            # SIGINT as a user's terminal has it: a suite started in the background (`.ci/run &`) inherits SIGINT
            # ignored, and Python would then install no Ctrl-C handler in the chat
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execv(sys.executable, [sys.executable, *argv])
        self.buffer = ""
        self.reads: list[tuple[float, str]] = []

    def expect(self, pattern: str, timeout: float = 600) -> str:
        """Everything read up to and including `pattern` (a regex); the rest stays buffered."""
        deadline = time.time() + timeout
        rx = re.compile(pattern)
        while not (m := rx.search(self.buffer)):
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; screen so far:\n{self.buffer[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                try:
                    data = os.read(self.fd, 4096).decode("utf-8", "replace")
                except OSError:  # the child exited
                    raise AssertionError(f"chat exited while waiting for {pattern!r}:\n{self.buffer[-2000:]}")
                self.reads.append((time.time(), data))
                self.buffer += data
        out, self.buffer = self.buffer[: m.end()], self.buffer[m.end():]
        return out

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def wait(self, timeout: float = 60) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:  # keep the pty drained
                if select.select([self.fd], [], [], 0.2)[0]:
                    self.buffer += os.read(self.fd, 4096).decode("utf-8", "replace")
            except OSError:
                pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("chat did not exit")


def _answer(term: Terminal, question: str) -> tuple[int, int, int]:
    """Ask; (completion tokens, prompt tokens, number of separate reads the answer arrived in)."""
    term.type(question)
    term.expect(r"bot> ")
    start = len(term.reads)
    screen = term.expect(STATS.pattern)
    pieces = sum(1 for _, d in term.reads[start:] if d.strip() and "tokens, prompt" not in d)
    term.expect(r"you> ")
    done, prompt = map(int, STATS.search(screen).groups())
    return done, prompt, pieces


def test_chat_in_a_terminal() -> None:
    term = Terminal(["-m", "protege.cli", "chat", STUDENT, "--temperature", "0", "--max-tokens", "300"])
    try:
        term.expect(r"chatting with smollm2-135m-instruct \(hf\)")
        term.expect(r"you> ")
        n1, p1, pieces = _answer(term, "What is 2+2?")
        assert 1 <= n1 < 300 and pieces >= 2  # the answer was written piece by piece as it was generated
        _, p2, _ = _answer(term, "What is 2+2?")
        assert p2 > p1 + n1  # the first question and answer went along with the second question
        term.type("/reset")
        term.expect(r"\(history cleared\)")
        term.expect(r"you> ")
        _, p3, _ = _answer(term, "What is 2+2?")
        assert p3 == p1  # nothing but the question again
        term.type("/system You answer in French.")
        term.expect(r"\(system prompt set\)")
        term.expect(r"you> ")
        term.type("Write a very long story about a cat who learns to sail.")
        term.expect(r"bot> \S")  # the answer has started
        os.write(term.fd, b"\x03")  # Ctrl-C, through the terminal's line discipline (SIGINT to the chat)
        term.expect(r"\[stopped\]", timeout=120)
        term.expect(r"you> ", timeout=120)  # still running, ready for the next line
        term.type("/exit")
        assert term.wait() == 0
    finally:
        try:
            os.kill(term.pid, signal.SIGKILL)
            os.waitpid(term.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
