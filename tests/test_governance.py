"""The teacher terms registry and the pre-training gate."""

from __future__ import annotations

import fnmatch

import pytest

from protege.config import validate_config
from protege.errors import UserError
from protege.governance import (
    STATUSES,
    assess,
    check_gate,
    load_terms,
    lookup,
    model_names,
    render_governance_section,
    shipped_terms,
)
from protege.records import Example

CUSTOM_TERMS = [
    {"id": "acme-closed", "provider": "Acme", "match": ["acme-pro*"], "status": "restricted",
     "condition": "Acme forbids training competing models on outputs.",
     "source": "https://acme.example/terms", "checked": "2026-01-01"},
    {"id": "acme-open", "provider": "Acme", "match": ["acme-open-*"], "status": "allowed",
     "condition": "Apache-2.0 weights.", "source": "https://acme.example/open", "checked": "2026-01-01"},
    {"id": "acme-cond", "provider": "Acme", "match": ["acme-cond-*"], "status": "conditional",
     "condition": "Derived models must carry 'Acme' in their name.",
     "source": "https://acme.example/cond", "checked": "2026-01-01"},
]


def cfg(acknowledge=(), terms=CUSTOM_TERMS):
    return validate_config({"run_dir": "/tmp/x", "governance": {"acknowledge": list(acknowledge),
                                                                "terms": list(terms)}})


def rec(model: str | None, source: str | None = None, i: int = 0) -> Example:
    meta = {}
    if model is not None:
        meta["teacher"] = {"kind": "openai", "model": model, "host": "api.acme.example", "model_version": "v1"}
    if source is not None:
        meta["source"] = source
    return Example([{"role": "user", "content": f"task {i}"}, {"role": "assistant", "content": "ok"}], meta)


def test_shipped_registry_is_valid_and_covers_major_providers():
    terms = shipped_terms()
    assert len(terms) >= 10
    ids = [t.id for t in terms]
    assert len(ids) == len(set(ids)), "duplicate ids in terms.yaml"
    for t in terms:
        assert t.status in STATUSES
        assert t.match, t.id
        assert all(p == p.lower() for p in t.match), t.id
        if t.status != "unknown":  # facts only where cited
            assert t.source and t.source.startswith("http"), t.id
            assert t.checked, t.id
    # Every provider the issue names is looked up to some entry, not "unmatched".
    for model in ("gpt-4o-mini", "claude-3-5-sonnet-20241022", "gemini-1.5-pro", "hf:google/gemma-2-9b-it",
                  "hf:meta-llama/Llama-3.1-8B-Instruct", "mistral-7b-instruct-v0.3",
                  "hf:Qwen/Qwen2.5-7B-Instruct", "deepseek-r1", "granite-3.1-8b-instruct"):
        assert lookup(model, terms).origin == "shipped", model


def test_shipped_patterns_do_not_overlap_on_example_names():
    # The registry's rule is first-match-wins, and it promises its patterns do not overlap.
    terms = shipped_terms()
    probes = {p.replace("*", "x").replace("?", "x") for t in terms for p in t.match if "[" not in p}
    for name in probes:
        hits = [t.id for t in terms if any(fnmatch.fnmatchcase(name, p) for p in t.match)]
        assert len(hits) <= 1, (name, hits)


def test_model_name_normalisation():
    assert model_names("hf:Meta-Llama/Llama-3.1-8B-Instruct") == ["llama-3.1-8b-instruct",
                                                                   "meta-llama/llama-3.1-8b-instruct"]
    assert model_names("gguf:/models/SmolLM2-135M-Instruct-Q8_0.gguf")[0] == "smollm2-135m-instruct-q8_0"
    assert model_names("gpt-4o-mini") == ["gpt-4o-mini"]


def test_lookup_strips_scheme_and_org_and_is_case_insensitive():
    terms = load_terms(cfg())
    assert lookup("hf:acme/ACME-Pro-2", terms).id == "acme-closed"
    assert lookup("gguf:/m/acme-open-7b.Q4_K_M.gguf", terms).id == "acme-open"
    unknown = lookup("totally-new-model", terms)
    assert unknown.status == "unknown" and unknown.origin == "unmatched"


def test_config_entry_overrides_shipped_entry_of_same_id():
    shipped = shipped_terms()
    target = next(t for t in shipped if t.status != "allowed")
    override = {"id": target.id, "match": list(target.match), "status": "allowed",
                "condition": "we have a written agreement", "source": "https://example.org/contract"}
    terms = load_terms(cfg(terms=[override]))
    assert [t.id for t in terms].count(target.id) == 1
    probe = target.match[0].replace("*", "x").replace("?", "x")
    hit = lookup(probe, terms)
    assert hit.status == "allowed" and hit.origin == "config"


def test_shipped_openai_api_models_are_not_allowed():
    # The registry's cited reading of OpenAI's terms: outputs may not train competing models.
    assert lookup("gpt-4o-mini").status != "allowed"


def test_gate_refuses_listing_teacher_count_and_terms_then_passes_when_acknowledged():
    data = [rec("acme-pro-1", i=i) for i in range(3)] + [rec("acme-open-7b", i=i) for i in range(5)]
    data += [rec("mystery-llm")] + [rec(None, source="seed") for _ in range(2)]
    with pytest.raises(UserError) as err:
        check_gate(data, cfg())
    msg = str(err.value)
    assert err.value.exit_code == 2
    assert "acme-pro-1: 3 of 11 records" in msg
    assert "Acme forbids training competing models" in msg and "https://acme.example/terms" in msg
    assert "mystery-llm: 1 of 11 records" in msg and "unknown" in msg
    assert "acme-open-7b" not in msg  # allowed teachers are not in the way
    assert "governance:" in msg and "acknowledge" in msg  # says how to fix

    # Acknowledging only one of the two still refuses, naming the other only.
    with pytest.raises(UserError) as err:
        check_gate(data, cfg(acknowledge=["acme-closed"]))
    assert "mystery-llm" in str(err.value) and "acme-pro-1" not in str(err.value)

    report = check_gate(data, cfg(acknowledge=["acme-closed", "mystery-llm"]))
    assert report.blocked == []
    assert report.total == 11 and report.own_records == 2
    by_model = {t.model: t for t in report.teachers}
    assert by_model["acme-pro-1"].records == 3 and by_model["acme-pro-1"].acknowledged_as == "acme-closed"
    assert by_model["mystery-llm"].acknowledged_as == "mystery-llm"
    acks = report.acknowledgements
    assert len(acks) == 2 and any("acme-pro-1 (3 records)" in a and "Acme forbids" in a for a in acks)


def test_gate_conditional_shows_condition_and_model_name_acknowledges():
    data = [rec("hf:acme/acme-cond-3b", i=i) for i in range(4)]
    with pytest.raises(UserError) as err:
        check_gate(data, cfg())
    assert "conditional" in str(err.value) and "must carry 'Acme' in their name" in str(err.value)
    # The model name (any spelling of it) acknowledges as well as the registry id.
    assert check_gate(data, cfg(acknowledge=["acme-cond-3b"])).blocked == []
    assert check_gate(data, cfg(acknowledge=["acme-cond"])).blocked == []


def test_an_unknown_teacher_cannot_be_acknowledged_by_its_synthetic_id():
    data = [rec("mystery-llm")]
    with pytest.raises(UserError):
        check_gate(data, cfg(acknowledge=["unknown:mystery-llm"]))


def test_own_and_unattributed_data_pass_and_are_counted():
    data = [rec(None, source="human"), rec(None, source="human-log"), rec(None)]
    report = check_gate(data, cfg())
    assert report.own_records == 2 and report.unattributed == 1 and report.teachers == []
    section = render_governance_section(report)
    assert "1 record(s) carry no teacher" in section


def test_governance_section_renders_table_and_acknowledgements():
    data = [rec("acme-pro-1"), rec("acme-open-7b")]
    report = assess(data, cfg(acknowledge=["acme-closed"]))
    md = render_governance_section(report)
    assert "| acme-pro-1 | 1 | acme-closed | restricted |" in md
    assert "yes (acme-closed)" in md and "not needed" in md
    assert "Acknowledged by the user" in md
    blocked = render_governance_section(assess(data, cfg()))
    assert "**Training is blocked**" in blocked and "**no**" in blocked
