"""The Ollama Modelfile: the training chat template as a Go template, stop tokens, default parameters.

Why hand-written: Ollama renders prompts with Go's text/template, Hugging Face chat templates are Jinja,
and no library translates one into the other (in general it cannot be done). Chat templates of the
ChatML / Llama / Gemma kind are, however, a fixed wrapper around each message's content, chosen by role.
`derive_template()` finds those wrappers by rendering the HF template on marker messages and cutting the
result at the markers; `go_template()` writes them as a Go template over `.Messages`; `render_go()` is a
tiny renderer for the Go-template subset used here (text, `{{ }}` with `-` trim markers, `range`,
`if`/`else if`/`else`/`end`, `eq`/`ne`, `.Field`, string literals), with which export renders test
conversations both ways and refuses a template that does not come out identical.

A template that injects a default system prompt when the conversation has none (SmolLM2's does)
becomes a `SYSTEM` line: Ollama puts it first as a system message when a request carries none
(`ollama_messages()` does the same here).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Render = Callable[[list[dict[str, str]], bool], str]  # (messages, add_generation_prompt) -> prompt text

_S, _U, _A, _U2 = "\u2460SYS\u2460", "\u2461USR\u2461", "\u2462AST\u2462", "\u2463USR\u2463"

# Conversations every export renders both ways (HF Jinja vs the Modelfile's Go template).
PROBE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "How are you?"}],
    [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"},
     {"role": "user", "content": "Another one, please.\nJust the number."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": " And 3+3? "}],
]


class TemplateNotExpressible(ValueError):
    """The chat template is not a per-role wrapper, so no Go template of ours reproduces it."""


@dataclass
class Wrappers:
    """Text around each message's content, by role; plus what precedes the messages and the generation prompt."""

    prefix: str
    head: dict[str, str]
    tail: dict[str, str]
    generation: str
    default_system: str | None


def _cut(text: str, marker: str) -> tuple[str, str]:
    if text.count(marker) != 1:
        raise TemplateNotExpressible(f"the template does not copy message content verbatim (marker {marker!r})")
    before, after = text.split(marker)
    return before, after


def _strip_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise TemplateNotExpressible(f"the template's {what} depends on the neighbouring messages")
    return text[len(prefix):]


def derive_template(render: Render) -> Wrappers:
    """Per-role wrappers of a chat template, found by rendering marker conversations."""
    sys_, user, asst, user2 = ({"role": r, "content": c} for r, c in
                               (("system", _S), ("user", _U), ("assistant", _A), ("user", _U2)))
    a, rest = _cut(render([sys_, user, asst, user2], False), _S)
    b, rest = _cut(rest, _U)
    c, rest = _cut(rest, _A)
    d, tail_user = _cut(rest, _U2)
    head_asst = _strip_prefix(c, tail_user, "assistant header")
    tail_asst = _cut(render([sys_, user, asst], False), _A)[1]
    head_user = _strip_prefix(d, tail_asst, "user header")
    if not b.endswith(head_user):
        raise TemplateNotExpressible("the template's system message ending depends on the next message")
    tail_sys = b[: len(b) - len(head_user)]
    closed = render([sys_, user], False)
    generation = _strip_prefix(render([sys_, user], True), closed, "generation prompt")

    lead = _cut(render([user], False), _U)[0]
    if not lead.endswith(head_user):
        raise TemplateNotExpressible("the template's first user message is wrapped differently")
    lead = lead[: len(lead) - len(head_user)]
    default_system = None
    if a.startswith(lead):  # no system message injected: `lead` is what precedes every conversation
        prefix, head_sys = lead, a[len(lead):]
    else:  # the template adds a default system message: `lead` is a + default + tail_sys
        if not (lead.startswith(a) and lead.endswith(tail_sys)):
            raise TemplateNotExpressible("the template's text before the first message could not be explained")
        default_system = lead[len(a): len(lead) - len(tail_sys)]
        prefix, head_sys = "", a
    return Wrappers(prefix, {"system": head_sys, "user": head_user, "assistant": head_asst},
                    {"system": tail_sys, "user": tail_user, "assistant": tail_asst}, generation, default_system)


def go_template(w: Wrappers) -> str:
    """The Go template (Ollama TEMPLATE) that renders `.Messages` with these wrappers."""
    for piece in [w.prefix, w.generation, *w.head.values(), *w.tail.values()]:
        if "{{" in piece or '"""' in piece:
            raise TemplateNotExpressible("the template's literal text contains '{{' or '\"\"\"'")
    branches = []
    for i, role in enumerate(("system", "user", "assistant")):
        kw = "if" if i == 0 else "else if"
        branches.append(f'{{{{ {kw} eq .Role "{role}" }}}}{w.head[role]}{{{{ .Content }}}}{w.tail[role]}')
    return f"{w.prefix}{{{{ range .Messages }}}}{''.join(branches)}{{{{ end }}}}{{{{ end }}}}{w.generation}"


def ollama_messages(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """What Ollama hands the template: the Modelfile's SYSTEM first when the request has no system message."""
    if system is not None and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


# --------------------------------------------------------------------------------------------------
# A renderer for a subset of Go's text/template
# --------------------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _tokens(template: str) -> list[tuple[str, str]]:
    """[("text", s) | ("action", body)] with Go's trim markers applied ("{{- " / " -}}" eat adjacent spaces)."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            out.append(("text", text))
        body = m.group(2).strip()
        if not body.startswith("/*"):
            out.append(("action", body))
        trim_next, pos = bool(m.group(3)), m.end()
    text = template[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if text:
        out.append(("text", text))
    return out


def _value(expr: str, dot: Any, root: Any) -> Any:
    expr = expr.strip()
    if expr.startswith('"') and expr.endswith('"'):
        return json.loads(expr)
    if expr == ".":
        return dot
    if expr.startswith("$."):
        return _field(root, expr[2:])
    if expr.startswith("."):
        return _field(dot, expr[1:])
    parts = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', expr)
    if parts and parts[0] in ("eq", "ne") and len(parts) == 3:
        equal = _value(parts[1], dot, root) == _value(parts[2], dot, root)
        return equal if parts[0] == "eq" else not equal
    if parts and parts[0] == "not" and len(parts) == 2:
        return not _truthy(_value(parts[1], dot, root))
    raise ValueError(f"unsupported Go template expression: {expr!r}")


def _field(obj: Any, name: str) -> Any:
    for part in name.split("."):
        obj = obj.get(part, obj.get(part.lower())) if isinstance(obj, dict) else getattr(obj, part)
    return obj


def _truthy(v: Any) -> bool:
    return bool(v)


def render_go(template: str, data: dict[str, Any]) -> str:
    """Render `template` with `data` (e.g. {"Messages": [{"Role": ..., "Content": ...}], "System": ...})."""
    toks = _tokens(template)
    out: list[str] = []

    def block(i: int, dot: Any, emit: bool) -> tuple[int, str]:
        """Run tokens from i until else/end at this level; (index of that token, its body)."""
        while i < len(toks):
            kind, body = toks[i]
            if kind == "text":
                if emit:
                    out.append(body)
                i += 1
                continue
            if body == "end" or body == "else" or body.startswith("else if "):
                return i, body
            if body.startswith("range "):
                expr = body[6:].split(":=", 1)[-1]  # `range $i, $m := .Messages` ranges over .Messages too
                items = _value(expr, dot, data) if emit else []
                start = i + 1
                j, tail = block(start, dot, False)  # find the matching end
                for item in items or []:
                    block(start, item, True)
                i = j + 1
                continue
            if body.startswith("if "):
                taken = False
                cond = _truthy(_value(body[3:], dot, data)) if emit else False
                j, tail = block(i + 1, dot, emit and cond)
                taken = cond
                while tail != "end":
                    if tail == "else":
                        j, tail = block(j + 1, dot, emit and not taken)
                        taken = True
                    else:  # else if COND
                        c = (not taken) and emit and _truthy(_value(tail[8:], dot, data))
                        j, tail = block(j + 1, dot, c)
                        taken = taken or c
                i = j + 1
                continue
            if emit:
                v = _value(body, dot, data)
                out.append("" if v is None else str(v))
            i += 1
        return i, ""

    end, stray = block(0, data, True)
    if stray:
        raise ValueError(f"unexpected {{{{ {stray} }}}} in the Go template")
    return "".join(out)


def render_messages(template: str, messages: list[dict[str, str]], system: str | None) -> str:
    """The prompt Ollama builds from a Modelfile's TEMPLATE and SYSTEM for these chat messages."""
    msgs = [{"Role": m["role"], "Content": m["content"]} for m in ollama_messages(messages, system)]
    return render_go(template, {"Messages": msgs, "System": system or ""})


# --------------------------------------------------------------------------------------------------
# The Modelfile itself
# --------------------------------------------------------------------------------------------------


def modelfile_text(gguf_name: str, template: str, system: str | None, stops: list[str],
                   params: dict[str, Any], header: str = "") -> str:
    for what, value in (("TEMPLATE", template), ("SYSTEM", system or "")):
        # Ollama ends a """ block at the first """: the value may neither contain one nor end with a quote.
        if '"""' in value or value.endswith('"'):
            raise TemplateNotExpressible(f'the {what} text contains """ or ends with a quote; Ollama cannot read it')
    lines = [f"# {line}" for line in header.splitlines()] + [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_modelfile(path: Path) -> dict[str, Any]:
    """FROM, TEMPLATE, SYSTEM and PARAMETERs of a Modelfile (the subset `modelfile_text` writes)."""
    text = path.read_text(encoding="utf-8")
    out: dict[str, Any] = {"parameters": [], "system": None}
    for key, value in re.findall(r'^(TEMPLATE|SYSTEM) """(.*?)"""', text, re.S | re.M):
        out[key.lower()] = value
    for line in text.splitlines():
        if line.startswith("FROM "):
            out["from"] = line[5:].strip()
        elif line.startswith("PARAMETER "):
            name, _, value = line[10:].partition(" ")
            value = value.strip()
            if value.startswith('"'):
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out["parameters"].append((name, value))
    return out
