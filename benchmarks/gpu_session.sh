#!/usr/bin/env bash
# One GPU session's checks for issue 5, run through the device tool in one call (see docs/benchmarks.md):
#   1. MFU of a random 1.1B Llama, full fine-tune, bf16, seq 2048 (benchmarks/bench_gpu_mfu.py), batch 8
#      and 4, with regional torch.compile and eager (ONLY_MFU=1: stop after these; SKIP_MFU=1: skip them);
#   2. `python -m protege.train` on the GPU with a tiny random Llama + SmolLM2's tokenizer (weights are
#      too big to carry): lora (single-gpu preset), qlora (bitsandbytes), full, and lora under
#      `accelerate launch` with the shipped FSDP preset (1 process: the path, not the scaling).
# Expects: wheels in .whl (pydantic etc.; the image lacks them), SmolLM2 tokenizer files in .gpu/tok.
# Writes logs and results to $OUT (or ./gpu-out).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
if [ "${NO_WHL:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PY:-python3}
nvidia-smi -L | tee "$OUT/env.txt"
$PY -c "import torch,transformers,peft,accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" | tee -a "$OUT/env.txt"

step() { echo "=== $1"; shift; local t=$SECONDS; "$@"; echo "=== rc=$? in $((SECONDS - t)) s"; }

if [ "${SKIP_MFU:-0}" != 1 ]; then  # the four rows of docs/benchmarks.md's MFU table
  for args in "--batch 8 --compile" "--compile" "--batch 8" ""; do
    step "mfu $args" timeout 200 $PY benchmarks/bench_gpu_mfu.py $args 2>&1 | tee -a "$OUT/mfu.log" | grep -v Warning
  done
fi
[ "${ONLY_MFU:-0}" = 1 ] && exit 0
W=/tmp/gpu_smoke; rm -rf "$W"; mkdir -p "$W"
$PY - "$W" <<'PYEOF'
import shutil, sys
from pathlib import Path
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
w = Path(sys.argv[1]); m = w / "tiny"
tok = AutoTokenizer.from_pretrained(".gpu/tok")
cfg = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(m)
tok.save_pretrained(m)
shutil.copy(".gpu/tok/generation_config.json", m)
(w / "cfg.yaml").write_text(f"run_dir: {w}/run\nstudent: {{model: {m}}}\n"
                            f"train: {{data: {Path('src/protege/templates/seeds.jsonl').resolve()}, max_steps: 12, "
                            f"save_every: 6, batch_size: 8}}\n")
print("tiny model ready")
PYEOF
for method in ${METHODS:-lora qlora full}; do
  rm -rf "$W/run"
  step "train $method" timeout 120 $PY -m protege.train -c "$W/cfg.yaml" --set train.method=$method 2>&1 | tee "$OUT/train_$method.log" | tail -5
  cp "$W/run/student/metrics.jsonl" "$OUT/metrics_$method.jsonl" 2>/dev/null
done
rm -rf "$W/run"
for pm in ${LAUNCH:-fsdp:full ddp:lora}; do
  preset=${pm%%:*}; method=${pm#*:}
  PF=$($PY -c "import protege.train.presets as p; print(p.preset_file('$preset'))")
  rm -rf "$W/run"
  step "train $method $preset" timeout 120 $PY -m accelerate.commands.launch --config_file "$PF" --num_processes 1 \
    -m protege.train -c "$W/cfg.yaml" --set train.method=$method 2>&1 | tee "$OUT/train_${preset}_$method.log" | tail -4
done
grep -h '"step"' "$OUT"/metrics_*.jsonl | head -3
echo done
