"""The project's one streaming file hasher (run store manifests, model verification, stage keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 8 * 1024 * 1024  # 8 MiB

Progress = Callable[[str, float, float], None]


def sha256_file(path: Path, *, progress: Progress | None = None, stage: str | None = None) -> str:
    """sha256 hex digest of a file, streamed in 8 MiB chunks; reports bytes to ``progress``."""
    path = Path(path)
    total = path.stat().st_size
    stage = stage or f"hashing {path.name}"
    digest = hashlib.sha256()
    done = 0
    if progress:
        progress(stage, 0, total)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(stage, done, total)
    return digest.hexdigest()
