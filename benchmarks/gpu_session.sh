#!/usr/bin/env bash
# One GPU session (issue 15), run through the device tool in ONE call; results in docs/benchmarks.md:
#   1. build a random 1.1B Llama (TinyLlama shape, SmolLM2 tokenizer) + synthetic 2048-token chat data
#      (benchmarks/gpu_session_tools.py build);
#   2. liger-kernel's fused linear cross-entropy vs ours on one 16k-token batch: loss, grads, time, memory;
#   3. `python -m protege.train` itself: full fine-tune (bf16 weights + fp32 master AdamW, regional compile)
#      with the liger and the protege loss kernel, batch 8 and 16, and without master weights; LoRA; eager
#      (no compile) if time is left;
#      MFU and tokens/s are read from its summary JSON (and student/metrics.jsonl);
#   4. precision: 30 full fine-tune steps at lr 1e-5, seq 512: fp32 weights vs bf16 + fp32 master weights vs
#      plain AdamW on bf16 weights (train.master_weights: false);
#   5. if the host CPU has avx512_bf16/AMX: benchmarks/bench_train.py fp32 vs bf16 on 8 of its cores, in the
#      background on cores the GPU runs do not use (random SmolLM2-135M-shaped weights, synthetic data).
# Expects: wheels in .whl (the image lacks pydantic, liger-kernel; transformers 5.25/peft/accelerate and
# huggingface_hub 2.4 carried to match the CPU box; NOT `kernels`: see load_model's use_kernels), SmolLM2
# tokenizer files in .gpu/tok (+ .gpu/smollm2_config.json for step 5).
# SMALL=1: a 2-layer model, 128-token examples, 6 steps: checks this script on a CPU in about a minute.
# Everything goes to $OUT: session.log (this output) and logs.tgz (each run's log, summary, metrics).
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
SMALL=${SMALL:-0}
BUDGET=${BUDGET:-480}  # seconds for the whole script; optional steps are skipped when too little is left
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$SECONDS
left() { echo $((BUDGET - (SECONDS - T0))); }
if [ "${NO_WHL:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site  # a warm machine keeps the last call's install: a wheel dropped since would linger
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || echo "WHEEL INSTALL FAILED"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
L=$(mktemp -d /tmp/gpu_logs.XXXX)
pack() { tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; }
step() {  # step NAME TIMEOUT CMD...: runs under `timeout`, logs to $L/NAME.log, never stops the script
  local name=$1 t=$2; shift 2
  if [ "$(left)" -lt "$t" ] && [ "${FORCE:-0}" != 1 ]; then echo "=== SKIP $name: $(left) s left < $t"; return 0; fi
  echo "=== $name ($(left) s left)"; local t0=$SECONDS
  timeout "$t" "$@" > "$L/$name.log" 2>&1; local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"; grep -v -i warn "$L/$name.log" | tail -n "${TAILN:-4}"; pack
  return $rc
}

{ nvidia-smi -L 2>&1; nproc; grep -m1 "model name" /proc/cpuinfo
  echo "bf16 cpu flags: $(grep -o -w 'avx512_bf16\|amx_bf16\|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  $PY -c "import torch,transformers,peft,accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  $PY -c "import liger_kernel, importlib.metadata as m; print('liger-kernel', m.version('liger-kernel'))"
  $PY -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1
} > "$L/env.txt" 2>&1; cat "$L/env.txt"
CPU_BF16=$(grep -c -w 'avx512_bf16\|amx_bf16' /proc/cpuinfo)

W=/dev/shm/protege_gpu; [ -d /dev/shm ] && [ -w /dev/shm ] || W=/tmp/protege_gpu
rm -rf "$W"; mkdir -p "$W"
if [ "$SMALL" = 1 ]; then SM=--small; LIGER=${LIGER:-protege}; STEPS=6; PSTEPS=4; SHORT=64; else SM=; LIGER=${LIGER:-liger}; STEPS=40; PSTEPS=30; SHORT=512; fi
step build 150 $PY benchmarks/gpu_session_tools.py build "$W" $SM || { echo "BUILD FAILED"; pack; exit 1; }

# 5. CPU bf16 benchmark in the background, pinned away from the GPU runs (cores 0-7 stay theirs).
CPU_PID=
if [ "${CPU_BENCH:-$([ "$CPU_BF16" -gt 0 ] && [ "$SMALL" != 1 ] && echo 1 || echo 0)}" = 1 ] \
   && [ -f .gpu/smollm2_config.json ]; then
  NC=$(nproc); CORES="$((NC / 2))-$((NC - 1))"; [ "$NC" -lt 4 ] && CORES="0-$((NC - 1))"
  ( $PY benchmarks/gpu_session_tools.py cpu-data "$W/cpu_data.jsonl" && mkdir -p "$W/smol" \
    && cp .gpu/smollm2_config.json "$W/smol/config.json" && cp .gpu/tok/* "$W/smol/" \
    && $PY -c "import sys,torch; from transformers import AutoConfig, AutoModelForCausalLM as M; torch.manual_seed(0); M.from_config(AutoConfig.from_pretrained(sys.argv[1]), dtype=torch.float32).save_pretrained(sys.argv[1])" "$W/smol" \
    && for dt in fp32 bf16; do
         OMP_NUM_THREADS=$((NC / 2)) timeout 400 taskset -c "$CORES" $PY benchmarks/bench_train.py --model "$W/smol" \
           --data "$W/cpu_data.jsonl" --records ${CPU_RECORDS:-64} --dtype $dt --variants naive,protege --threads $((NC / 2))
       done ) > "$L/cpu_bench.log" 2>&1 &
  CPU_PID=$!
  echo "=== cpu bench started in the background on cores $CORES (pid $CPU_PID)"
fi
GPU_CORES=
[ -n "$CPU_PID" ] && GPU_CORES="taskset -c 0-$(( $(nproc) / 2 - 1 ))"

# 2. the two loss kernels on one batch (CUDA only)
if [ "${SKIP_PARITY:-0}" != 1 ] && $PY -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  TAILN=30 step parity 120 $PY benchmarks/gpu_session_tools.py parity $SM
fi

train() {  # train NAME TIMEOUT --set ...: one `python -m protege.train` run; summary JSON + metrics kept
  local name=$1 t=$2; shift 2
  rm -rf "$W/run"
  TAILN=2 step "train_$name" "$t" $GPU_CORES $PY -m protege.train -c "$W/base.yaml" --set train.max_steps=$STEPS "$@"
  [ -f "$L/train_$name.log" ] && grep '^{' "$L/train_$name.log" | tail -1 > "$L/train_$name.json"
  cp "$W/run/student/metrics.jsonl" "$L/metrics_$name.jsonl" 2>/dev/null
  pack
}
# 3. MFU / tokens/s from protege train itself
train full_liger 150 --set train.method=full --set train.fused_loss=$LIGER
train full_protege 120 --set train.method=full --set train.fused_loss=protege
train lora 120 --set train.method=lora --set train.lr=2e-4
train full_liger_b16 130 --set train.method=full --set train.fused_loss=$LIGER --set train.batch_size=16 --set train.token_budget=32768
train full_liger_nomaster 100 --set train.method=full --set train.fused_loss=$LIGER --set train.master_weights=false
# 4. precision (seq 512, eager): bf16 + fp32 master (default), plain AdamW on bf16, fp32 weights
P="--set train.max_steps=$PSTEPS --set train.method=full --set train.data=$W/data_short.jsonl --set train.max_seq_len=$SHORT --set train.compile=false --set train.fused_loss=protege"
train prec_master 70 $P
train prec_bf16_plain 70 $P --set train.master_weights=false
train prec_fp32 80 $P --set train.bf16=false
train full_liger_eager 90 --set train.method=full --set train.fused_loss=$LIGER --set train.compile=false

if [ -n "$CPU_PID" ]; then
  echo "=== waiting for the cpu bench ($(left) s left)"
  ( sleep "$(( $(left) > 5 ? $(left) : 5 ))"; kill "$CPU_PID" 2>/dev/null ) & WPID=$!
  wait "$CPU_PID"; echo "=== cpu bench rc=$?"; kill "$WPID" 2>/dev/null
  grep -E '^\||RESULT|^\{' "$L/cpu_bench.log" | tail -12
fi
$PY benchmarks/gpu_session_tools.py table "$L" | tee "$L/table.md"
for f in "$L"/train_*.json; do echo "$(basename "$f"): $(head -c 600 "$f")"; done
for f in "$L"/metrics_prec_*.jsonl; do echo "$(basename "$f") losses:" \
  $($PY -c "import json,sys; print([round(json.loads(l)['loss'],4) for l in open(sys.argv[1]) if '\"loss\"' in l])" "$f"); done
pack
echo "done in $((SECONDS - T0)) s"
