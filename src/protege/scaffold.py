"""`protege init`: a new project folder with a commented config and our own seed tasks."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from protege.errors import UserError

_FILES = {"protege.yaml": "protege.yaml", "seeds.jsonl": "seeds.jsonl"}


def template_text(name: str) -> str:
    """A file shipped in protege/templates (the config template, the seed tasks)."""
    return resources.files("protege").joinpath("templates", name).read_text(encoding="utf-8")


def init_project(directory: Path, force: bool = False) -> list[Path]:
    """Write protege.yaml and seeds.jsonl into `directory`; never overwrite unless forced."""
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} exists and is not a folder")
    targets = {directory / dst: src for dst, src in _FILES.items()}
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        raise UserError(
            f"{', '.join(str(p) for p in existing)} already exist(s); nothing was written",
            hint="Pick a new folder, or pass --force to overwrite them.",
        )
    directory.mkdir(parents=True, exist_ok=True)
    for path, src in targets.items():
        path.write_text(template_text(src), encoding="utf-8")
    return list(targets)
