"""Prompt templates as data files (this folder), each paired with a pure `parse()`.

`load(name)` returns the template text with its sha256, which every generated record carries
in `meta.template` so a dataset can be traced to the exact wording that produced it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def provenance(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}


@lru_cache(maxsize=None)
def load(name: str) -> Template:
    """The template `prompts/<name>.txt`."""
    return Template(name, (_DIR / f"{name}.txt").read_text(encoding="utf-8"))
