"""Governance: the teacher terms registry and the pre-training gate.

Some teachers' terms of use restrict training other models on their outputs. protege ships a
registry of what each provider / model family says (`protege/terms.yaml`: status allowed |
restricted | conditional | unknown, the condition in one sentence, the source URL and the date
it was checked); users add or override entries in their config (`governance.terms`).

The gate (`check_gate`) runs before training: it groups the dataset's records by the teacher
that wrote them (provenance in `meta["teacher"] = {"kind", "model", "host", "model_version"}`)
and stops the run with a `UserError` (exit 2) listing every restricted, conditional or unknown
teacher with its record count and what its terms say, unless the config lists the teacher (its
registry id or model name) in `governance.acknowledge`. What was acknowledged is returned in a
`GateReport` so the model card can say so. Records marked as the user's own data (`meta.source`
in human / human-log / seed) or carrying no teacher pass; the report counts them separately so
a card never hides that their origin was not recorded.

This is not legal advice, and the registry says "unknown" wherever no source could be cited.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from protege.config import RunConfig, TermsOverride
from protege.errors import UserError
from protege.records import Example

STATUSES = ("allowed", "restricted", "conditional", "unknown")
OWN_SOURCES = ("human", "human-log", "seed")
_BLOCKING = ("restricted", "conditional", "unknown")


@dataclass(frozen=True)
class TermsEntry:
    """What one provider / model family's terms say about training on its outputs."""

    id: str
    status: str
    match: tuple[str, ...] = ()
    provider: str | None = None
    condition: str = ""
    source: str | None = None
    checked: str | None = None
    origin: str = "shipped"  # shipped | config | unmatched

    def describe(self) -> str:
        """One line: status, condition, source and date (for messages and cards)."""
        parts = [self.status]
        if self.condition:
            parts.append(self.condition.strip())
        if self.source:
            checked = f", checked {self.checked}" if self.checked else ""
            parts.append(f"source: {self.source}{checked}")
        elif self.status == "unknown":
            parts.append("no registry entry matches this model: read its terms yourself")
        return " — ".join(parts)


# ---------------------------------------------------------------- registry


def _entry(raw: Any, where: str, origin: str) -> TermsEntry:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a terms entry must be a mapping, got {type(raw).__name__}")
    if raw.get("checked") is not None:  # YAML reads 2026-11-26 as a date
        raw = {**raw, "checked": str(raw["checked"])}
    try:
        spec = TermsOverride.model_validate(raw)
    except Exception as err:  # pydantic ValidationError: name the entry
        raise UserError(f"{where}: invalid terms entry {raw.get('id', '?')!r}: {err}") from None
    return TermsEntry(id=spec.id, status=spec.status, match=tuple(p.lower() for p in spec.match),
                      provider=spec.provider, condition=spec.condition, source=spec.source,
                      checked=None if spec.checked is None else str(spec.checked), origin=origin)


def shipped_terms() -> list[TermsEntry]:
    """The registry shipped with protege (`protege/terms.yaml`); empty if the file is absent."""
    try:
        text = resources.files("protege").joinpath("terms.yaml").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    data = yaml.safe_load(text) or []
    if isinstance(data, dict):  # allow {entries: [...]} / {terms: [...]} as well as a bare list
        data = data.get("entries", data.get("terms", []))
    known = set(TermsOverride.model_fields)
    # The shipped file may carry documentation keys (e.g. notes); keep only the schema's fields.
    return [_entry({k: v for k, v in e.items() if k in known} if isinstance(e, dict) else e,
                   f"protege/terms.yaml entry {i + 1}", "shipped")
            for i, e in enumerate(data)]


def load_terms(cfg: RunConfig | None = None) -> list[TermsEntry]:
    """Shipped entries merged with the config's: a config entry replaces a shipped one of the
    same id, new ids are added; config entries are consulted first when matching."""
    user = [] if cfg is None else [
        _entry(t.model_dump(), f"governance.terms[{i}]", "config")
        for i, t in enumerate(cfg.governance.terms)
    ]
    user_ids = {e.id for e in user}
    return user + [e for e in shipped_terms() if e.id not in user_ids]


def model_names(model: str) -> list[str]:
    """Lower-cased names a model is matched under: the bare name first, then `org/name`.

    Strips `hf:` / `gguf:` schemes, folders of local paths and `.gguf`, so that
    `hf:meta-llama/Llama-3.1-8B-Instruct` is matched as `llama-3.1-8b-instruct` (and as
    `meta-llama/llama-3.1-8b-instruct` for patterns that name the org).
    """
    name = model.strip().lower()
    name = re.sub(r"^(hf|gguf|ollama|openai)[:]", "", name)
    name = name.rstrip("/")
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    parts = [p for p in re.split(r"[/\\]", name) if p]
    if not parts:
        return [name]
    bare = parts[-1]
    names = [bare]
    if len(parts) >= 2:
        names.append(f"{parts[-2]}/{bare}")
    return names


def lookup(model_name: str, terms: list[TermsEntry] | None = None) -> TermsEntry:
    """The registry entry for a model (status `unknown` when nothing matches).

    Config entries are consulted before shipped ones; otherwise the first matching entry in
    file order wins (the registry's documented rule; its patterns are written not to overlap).
    """
    terms = load_terms() if terms is None else terms
    names = model_names(model_name)
    for origin in ("config", "shipped"):
        for entry in terms:
            if entry.origin == origin and any(
                fnmatch.fnmatchcase(n, p) for p in entry.match for n in names
            ):
                return entry
    return TermsEntry(id=f"unknown:{names[0]}", status="unknown", origin="unmatched")


# ---------------------------------------------------------------- the gate


def teacher_of(ex: Example) -> dict[str, Any] | None:
    """The teacher provenance of a record, or None for the user's own / unattributed data."""
    teacher = ex.meta.get("teacher")
    if isinstance(teacher, str) and teacher.strip():
        return {"model": teacher.strip()}
    if isinstance(teacher, dict) and str(teacher.get("model") or "").strip():
        return teacher
    return None


@dataclass
class TeacherUse:
    """One teacher found in a dataset, what its terms say and whether it was acknowledged."""

    model: str
    records: int
    entry: TermsEntry
    kinds: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    acknowledged_as: str | None = None

    @property
    def blocked(self) -> bool:
        return self.entry.status in _BLOCKING and self.acknowledged_as is None


@dataclass
class GateReport:
    """The dataset's provenance against the registry (what the model card reports)."""

    total: int = 0
    own_records: int = 0  # meta.source in OWN_SOURCES
    unattributed: int = 0  # no teacher and no own-data source recorded
    teachers: list[TeacherUse] = field(default_factory=list)

    @property
    def blocked(self) -> list[TeacherUse]:
        return [t for t in self.teachers if t.blocked]

    @property
    def acknowledgements(self) -> list[str]:
        """One line per acknowledged teacher, for the model card."""
        return [f"{t.model} ({t.records} records): acknowledged as {t.acknowledged_as!r} in "
                f"governance.acknowledge; terms: {t.entry.describe()}"
                for t in self.teachers if t.acknowledged_as is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "own_records": self.own_records,
                "unattributed": self.unattributed,
                "teachers": [{"model": t.model, "records": t.records, "terms_id": t.entry.id,
                              "status": t.entry.status, "condition": t.entry.condition,
                              "source": t.entry.source, "checked": t.entry.checked,
                              "acknowledged_as": t.acknowledged_as} for t in self.teachers]}


def _ack_key(text: str) -> str:
    return text.strip().lower()


def _acknowledged(model: str, entry: TermsEntry, acknowledge: list[str]) -> str | None:
    """The acknowledge item naming this teacher (its registry id or its model name), if any."""
    wanted = {_ack_key(model), *model_names(model)}
    if entry.origin != "unmatched":  # an id like "unknown:x" is not a thing to acknowledge
        wanted.add(_ack_key(entry.id))
    for item in acknowledge:
        if _ack_key(item) in wanted or model_names(item)[0] in wanted:
            return item
    return None


def assess(examples: Iterable[Example], cfg: RunConfig) -> GateReport:
    """Group records by teacher and look each up in the registry. Never raises for terms."""
    terms = load_terms(cfg)
    counts: Counter[str] = Counter()
    kinds: dict[str, set[str]] = {}
    hosts: dict[str, set[str]] = {}
    report = GateReport()
    for ex in examples:
        report.total += 1
        teacher = teacher_of(ex)
        if ex.meta.get("source") in OWN_SOURCES:
            report.own_records += 1
            continue
        if teacher is None:
            report.unattributed += 1
            continue
        model = str(teacher["model"]).strip()
        counts[model] += 1
        if teacher.get("kind"):
            kinds.setdefault(model, set()).add(str(teacher["kind"]))
        host = teacher.get("host") or teacher.get("endpoint")  # generate records "endpoint"
        if host:
            hosts.setdefault(model, set()).add(str(host))
    for model, n in counts.most_common():
        entry = lookup(model, terms)
        use = TeacherUse(model, n, entry, sorted(kinds.get(model, ())), sorted(hosts.get(model, ())))
        use.acknowledged_as = _acknowledged(model, entry, cfg.governance.acknowledge)
        report.teachers.append(use)
    return report


def check_gate(examples: Iterable[Example], cfg: RunConfig) -> GateReport:
    """The pre-training gate: raise UserError on unacknowledged restricted/conditional/unknown
    teachers; otherwise return the report (its `acknowledgements` go into the model card)."""
    report = assess(examples, cfg)
    blocked = report.blocked
    if not blocked:
        return report
    lines = [f"the training data holds records from {len(blocked)} teacher(s) whose terms "
             "restrict or may restrict training other models on their outputs:"]
    for t in blocked:
        lines.append(f"  - {t.model}: {t.records} of {report.total} records; terms "
                     f"[{t.entry.id}]: {t.entry.describe()}")
    names = ", ".join(repr(t.entry.id if t.entry.origin != "unmatched" else t.model) for t in blocked)
    raise UserError(
        "\n".join(lines),
        hint=("Read those terms. If your use complies, acknowledge each teacher in the config "
              f"(it will be written into the model card):\n  governance:\n    acknowledge: [{names}]\n"
              "or add a governance.terms entry for a model the registry does not know."),
    )


# ---------------------------------------------------------------- cards


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def render_governance_section(report: GateReport, heading: str = "## Teachers and their terms") -> str:
    """Markdown for dataset and model cards: each teacher, its records, terms and acknowledgement."""
    out = [heading, ""]
    if report.teachers:
        out += ["| teacher | records | terms | status | condition | source (checked) | acknowledged |",
                "|---|---|---|---|---|---|---|"]
        for t in report.teachers:
            src = f"{t.entry.source or '—'}" + (f" ({t.entry.checked})" if t.entry.checked else "")
            ack = f"yes ({t.acknowledged_as})" if t.acknowledged_as else (
                "not needed" if t.entry.status == "allowed" else "**no**")
            out.append(f"| {_cell(t.model)} | {t.records} | {_cell(t.entry.id)} | {t.entry.status} | "
                       f"{_cell(t.entry.condition) or '—'} | {_cell(src)} | {ack} |")
        out.append("")
    else:
        out += ["No record carries teacher provenance.", ""]
    if report.own_records:
        out.append(f"- {report.own_records} record(s) are marked as the user's own data (seed / human).")
    if report.unattributed:
        out.append(f"- {report.unattributed} record(s) carry no teacher and no source: their origin "
                   "was not recorded, so their terms could not be checked.")
    if report.blocked:
        out.append("- **Training is blocked** until these teachers are acknowledged in "
                   "`governance.acknowledge`: " + ", ".join(t.model for t in report.blocked) + ".")
    if report.acknowledgements:
        out += ["", "Acknowledged by the user (governance.acknowledge):", ""]
        out += [f"- {line}" for line in report.acknowledgements]
    out += ["", "_The registry records what each provider's terms said when checked; it is not "
            "legal advice. Statuses marked unknown have no citable source._", ""]
    return "\n".join(out)
