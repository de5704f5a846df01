"""The run directory: its layout and `manifest.json`. The only module that builds run paths.

```
RUN_DIR/
  config.yaml            the resolved config of the last stage run (secrets never appear)
  manifest.json          artifacts (sha256, records, bytes), config hashes, versions, stage timings
  calls.sqlite           every teacher call (generate)
  generate/raw.jsonl     generated records, provenance in meta
  generate/failed.jsonl  requests that failed after their last retry
  generate/dropped.jsonl generated records dropped by the generation filters, with reasons
  data/{train,val,test}.jsonl, data/dropped.jsonl, data/card.md, data/stats/*.png   (curate)
  student/               adapter/, merged/, checkpoints/, metrics.jsonl, preflight.txt, MODEL_CARD.md
  eval/                  answers/<set>__<candidate>.jsonl, judgements.jsonl, scores.json
  report.html, report.md
```
Stages read artifacts and write new ones; they never edit their inputs.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from protege.errors import UserError
from protege.hashing import sha256_file
from protege.paths import atomic_write_text, check_dir_creatable, ensure_dir

_TRACKED_PACKAGES = ("protege", "torch", "transformers", "peft", "trl", "accelerate", "datasets",
                     "openai", "llama_cpp_python", "rapidfuzz", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunStore:
    """Paths and manifest of one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self._artifacts_recorded = 0

    # -- layout -------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest_file(self) -> Path:
        return self.root / "manifest.json"

    @property
    def calls_db(self) -> Path:
        return self.root / "calls.sqlite"

    @property
    def generate_dir(self) -> Path:
        return self.root / "generate"

    @property
    def raw(self) -> Path:
        return self.generate_dir / "raw.jsonl"

    @property
    def failed(self) -> Path:
        return self.generate_dir / "failed.jsonl"

    @property
    def generate_dropped(self) -> Path:
        return self.generate_dir / "dropped.jsonl"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return self.data_dir / f"{name}.jsonl"

    @property
    def dropped(self) -> Path:
        return self.data_dir / "dropped.jsonl"

    @property
    def card(self) -> Path:
        return self.data_dir / "card.md"

    @property
    def stats_dir(self) -> Path:
        return self.data_dir / "stats"

    @property
    def stats_file(self) -> Path:
        """Curate's numbers (counts per filter, lengths, diversity) as JSON."""
        return self.stats_dir / "stats.json"

    @property
    def student_dir(self) -> Path:
        return self.root / "student"

    @property
    def checkpoints_dir(self) -> Path:
        return self.student_dir / "checkpoints"

    @property
    def train_config(self) -> Path:
        """The resolved training settings (config block, hardware plan, TrainingArguments) as JSON."""
        return self.student_dir / "train_config.json"

    @property
    def adapter_dir(self) -> Path:
        return self.student_dir / "adapter"

    @property
    def merged_dir(self) -> Path:
        return self.student_dir / "merged"

    @property
    def metrics(self) -> Path:
        return self.student_dir / "metrics.jsonl"

    @property
    def preflight(self) -> Path:
        return self.student_dir / "preflight.txt"

    @property
    def model_card(self) -> Path:
        return self.student_dir / "MODEL_CARD.md"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def eval_answers_dir(self) -> Path:
        return self.eval_dir / "answers"

    def eval_answers(self, set_name: str, candidate: str) -> Path:
        """One candidate's answers to one eval set: eval/answers/<set>__<candidate>.jsonl."""
        return self.eval_answers_dir / f"{set_name}__{candidate}.jsonl"

    @property
    def judgements(self) -> Path:
        return self.eval_dir / "judgements.jsonl"

    @property
    def scores(self) -> Path:
        return self.eval_dir / "scores.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def check_writable(self) -> None:
        """Raise the UserError `ensure` would (a file in the way, read-only, a symlink loop), without
        creating anything: for checks before a stage starts its work."""
        check_dir_creatable(self.root)

    def ensure(self, *dirs: Path) -> None:
        """Create the run directory and `dirs` in it; a path that cannot be created or written
        (a file in the way, read-only, no permission, a symlink loop) is a UserError naming it."""
        for d in (self.root, *dirs):
            ensure_dir(d)

    # -- manifest -----------------------------------------------------------
    def load_manifest(self) -> dict[str, Any]:
        if self.manifest_file.exists():
            try:
                manifest = json.loads(self.manifest_file.read_text(encoding="utf-8"))
            except (ValueError, OSError) as err:
                raise UserError(f"{self.manifest_file}: unreadable ({type(err).__name__}: {err})",
                                hint="It is written by protege; restore it, or move it away to start a new "
                                     "manifest (the artifacts themselves are untouched).") from None
            if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict) \
                    or not isinstance(manifest.get("artifacts", {}), dict):
                raise UserError(f"{self.manifest_file}: not a protege manifest",
                                hint="Move it away to start a new manifest, or use another run_dir.")
            manifest.setdefault("stages", {})
            manifest.setdefault("artifacts", {})
            return manifest
        return {"protege_version": _version(), "created": now_iso(), "stages": {}, "artifacts": {}}

    def _save_manifest(self, manifest: dict[str, Any]) -> None:
        self.ensure()
        manifest["updated"] = now_iso()
        manifest["versions"] = package_versions()
        # atomic: a crash never leaves half a manifest
        atomic_write_text(self.manifest_file, json.dumps(manifest, indent=2, sort_keys=False) + "\n")

    def record_artifact(self, path: Path, stage: str, records: int | None = None) -> dict[str, Any]:
        """Hash an artifact file and note it in the manifest."""
        entry = {"stage": stage, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                 "written": now_iso()}
        if records is not None:
            entry["records"] = records
        manifest = self.load_manifest()
        self._artifacts_recorded += 1
        manifest["artifacts"][self.relative(path)] = entry
        self._save_manifest(manifest)
        return entry

    def relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def write_text(self, path: Path, text: str) -> Path:
        """Write an artifact atomically (temp file + rename): never torn, errors name the path."""
        return atomic_write_text(path, text)

    def write_config(self, config_yaml: str) -> Path:
        """Save the resolved config (the caller passes YAML that holds no secrets)."""
        self.ensure()
        atomic_write_text(self.config_file, config_yaml)
        return self.config_file

    def run_key(self, stage: str) -> str | None:
        """The inputs key `protege run` recorded when `stage` last finished (None if never)."""
        return self.load_manifest().get("run_keys", {}).get(stage)

    def set_run_key(self, stage: str, key: str) -> None:
        manifest = self.load_manifest()
        manifest.setdefault("run_keys", {})[stage] = key
        self._save_manifest(manifest)

    @contextmanager
    def stage(self, name: str, config_hash: str | None = None) -> Iterator[dict[str, Any]]:
        """Time a stage and record it in the manifest, also when it fails.

        Yields a dict the stage may fill with facts worth keeping (counts, inputs' hashes).
        A stage refused with a UserError before it recorded any artifact (a bad input file, a
        refused setting) leaves the manifest untouched: bad input never changes the run directory.
        """
        info: dict[str, Any] = {"started": now_iso(), "config_hash": config_hash}
        t0 = time.perf_counter()
        status = "failed"
        recorded_before = self._artifacts_recorded
        try:
            yield info
            status = "ok"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except UserError:
            if self._artifacts_recorded == recorded_before:
                status = "refused"
            raise
        finally:
            if status != "refused":
                self._record_stage(name, info, t0, status)

    def _record_stage(self, name: str, info: dict[str, Any], t0: float, status: str) -> None:
        info["seconds"] = round(time.perf_counter() - t0, 3)
        info["finished"] = now_iso()
        info["status"] = status
        info["argv"] = sys.argv[1:]
        manifest = self.load_manifest()
        manifest["stages"][name] = info
        self._save_manifest(manifest)


def _version() -> str:
    from protege import __version__

    return __version__
