"""Prompts for `explain` (Orca system prompts) and `self-chat` (the teacher as the user)."""

from __future__ import annotations

from protege.prompts import Template, load


def explain_pool(custom: list[str] | None = None) -> tuple[list[str], Template]:
    """The system prompts to draw from and the template they come from (for provenance)."""
    if custom:
        text = "\n---\n".join(custom)
        return list(custom), Template("explain_system_prompts(config)", text)
    tpl = load("explain_system_prompts")
    return [p.strip() for p in tpl.text.split("\n---\n") if p.strip()], tpl


def user_turn_messages(conversation: list[dict[str, str]]) -> list[dict[str, str]]:
    """Messages asking the teacher for the *user's* next turn: roles swapped under our prompt."""
    swap = {"user": "assistant", "assistant": "user"}
    turns = [{"role": swap[m["role"]], "content": m["content"]} for m in conversation if m["role"] in swap]
    return [{"role": "system", "content": load("self_chat_user").text.strip()}, *turns]


def clean_user_turn(text: str) -> str:
    """Strip the role labels and quotes a model sometimes puts around the simulated message."""
    out = text.strip()
    for label in ("User:", "Human:", "USER:", "HUMAN:", "Next message:"):
        if out.startswith(label):
            out = out[len(label):].strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "\"'":
        out = out[1:-1].strip()
    return out
