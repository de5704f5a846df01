"""`protege export` for real: llama.cpp's converter, llama.cpp loading the result, the HF model as reference.

- the offline student (SmolLM2-135M, its prepared HF folder) to an f16 GGUF whose greedy answers through
  llama.cpp's own chat path match the HF model's first 32 tokens on at least 9 of 10 prompts;
- a LoRA-adapted student (a run directory) to merged safetensors and to GGUF + Ollama Modelfile, with the
  run's model card carried over and the Modelfile's template rendering like the HF chat template;
- a converter that loses the chat template: export exits 2 and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.ship.conftest import STUDENT

pytestmark = pytest.mark.slow

# Ours, distinct from the prompts export checks itself with.
PROMPTS = [
    "What is the boiling point of water?",
    "List three fruits that are red.",
    "How many legs does a spider have?",
    "Write one sentence about the sea.",
    "What is the opposite of 'cold'?",
    "Give an example of a mammal.",
    "What does a thermometer measure?",
    "Name a programming language.",
    "What day comes after Monday?",
    "Why is the sky blue? Answer briefly.",
]


@pytest.fixture(scope="module")
def f16_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp("export") / "gguf"
    r = run_cli("export", STUDENT, "--format", "gguf", "--quant", "f16", "--out", str(out), "--check-prompts", "2")
    assert r.returncode == 0, r.stderr
    assert "chat template same, EOS ok, tokenizer same" in r.stderr
    return out


def test_f16_gguf_agrees_with_the_hf_model(f16_export: Path, student_dir: Path) -> None:
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = f16_export / f"{STUDENT}.f16.gguf"
    record = json.loads((f16_export / "export.json").read_text())
    assert record["ok"] and set(record["files"]) == {gguf.name}
    assert record["check"]["template"] == "same" and record["check"]["eos"] == "ok"
    tok = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=2, verbose=False)
    same = 0
    for p in PROMPTS:
        msgs = [{"role": "user", "content": p}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, do_sample=False, max_new_tokens=32)
        hf = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        # llama.cpp's own chat path: the template and EOS read from the GGUF, greedy.
        gg = llm.create_chat_completion(messages=msgs, max_tokens=32, temperature=0.0)["choices"][0]["message"]["content"]
        same += gg == hf
    llm.close()
    assert same >= 9, f"only {same} of 10 greedy answers identical"


def tok_eos(student_dir: Path) -> int:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student_dir).convert_tokens_to_ids("<|im_end|>")


def _adapter_export(adapter_run: Path, tmp: Path, fmt: str, *extra: str) -> Path:
    out = tmp / fmt
    r = run_cli("export", str(adapter_run), "--format", fmt, "--out", str(out), *extra)
    assert r.returncode == 0, r.stderr
    return out


def test_hf_export_merges_the_adapter(adapter_run: Path, student_dir: Path, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _adapter_export(adapter_run, tmp_path, "hf")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "README.md", "export.json"} <= names
    assert not any(n.startswith("adapter") for n in names)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32),
                                          adapter_run / "student" / "adapter").eval()
    base = AutoModelForCausalLM.from_pretrained(student_dir, dtype=torch.float32).eval()
    x = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.inference_mode():
        a, b, c = merged(x).logits, reference(x).logits, base(x).logits
    assert torch.allclose(a, b, atol=1e-3) and not torch.allclose(a, c, atol=1e-3)
    assert merged.generation_config.eos_token_id == tok_eos(student_dir)  # the chat turn's end, <|im_end|>
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == AutoTokenizer.from_pretrained(student_dir).chat_template
    card = (out / "README.md").read_text()
    assert "qwen2.5-coder-1.5b-instruct | Apache-2.0 | allowed (gate passed)" in card  # governance carried over
    assert "training data: `data/train.jsonl` (42 records)" in card and "## Training record" in card


def test_ollama_export_of_a_trained_student(adapter_run: Path, student_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from transformers import AutoTokenizer

    from protege.ship.modelfile import read_modelfile, render_messages

    out = _adapter_export(adapter_run, tmp_path, "ollama", "--quant", "q8_0", "--check-prompts", "1")
    gguf = out / "tiny-student.q8_0.gguf"
    assert gguf.is_file() and (out / "Modelfile").is_file()
    mf = read_modelfile(out / "Modelfile")
    assert mf["from"] == f"./{gguf.name}"
    assert ("stop", "<|im_end|>") in mf["parameters"]
    tok = AutoTokenizer.from_pretrained(student_dir)
    for conv in ([{"role": "user", "content": "Plan a picnic for four."}],
                 [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye\n\nnow"}]):
        assert render_messages(mf["template"], conv, mf["system"]) == \
            tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert "allowed (gate passed)" in (out / "README.md").read_text()
    record = json.loads((out / "export.json").read_text())
    assert record["ok"] and record["source_kind"] == "adapter" and record["check"]["problems"] == []


def test_export_fails_loudly_when_the_chat_template_is_lost(f16_export: Path, tmp_path: Path) -> None:
    # Fault injection: a "converter" that writes the good GGUF minus its chat template (what other tools'
    # exports are reported to do), through the documented PROTEGE_GGUF_CONVERTER hook.
    fake = tmp_path / "lossy_converter.py"
    fake.write_text(
        "import subprocess, sys\n"
        "out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "sys.exit(subprocess.call([sys.executable, '-m', 'gguf.scripts.gguf_new_metadata', '--force', '--remove-metadata',\n"
        "                          'tokenizer.chat_template', %r, out]))\n"
        % str(f16_export / f"{STUDENT}.f16.gguf"))
    out = tmp_path / "lossy"
    r = run_cli("export", STUDENT, "--format", "gguf", "--out", str(out), "--check-prompts", "0",
                env={"PROTEGE_GGUF_CONVERTER": str(fake)})
    assert r.returncode == 2, r.stderr
    assert "export check failed" in r.stderr and "chat template did not survive" in r.stderr
    assert "Traceback" not in r.stderr
    record = json.loads((out / "export.json").read_text())
    assert record["ok"] is False and record["check"]["template"] == "missing"
