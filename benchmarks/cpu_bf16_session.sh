#!/usr/bin/env bash
# Issue 14 in ONE device call: CPU training in fp32 vs bf16 on the device machine's HOST CPU (the GPU is not
# used; that host has avx512_bf16 + AMX, the dev box has neither). Results go to docs/benchmarks.md.
#   1. per-op profile (torch.profiler, self CPU time) of the first 3 steps in bf16: naive, protege with the
#      fp32 base (before the fix), protege with the bf16 base;
#   2. benchmarks/bench_train.py, one epoch over the same records per row, each row its own process:
#      bf16 and fp32, naive vs protege, protege's what-ifs: --base-dtype fp32|bf16, --token-budget,
#      --share-prefix off; then the same at all logical CPUs if time is left.
# Model: random weights of SmolLM2-135M's shape (gpu_session_tools.py cpu-model; the real weights are too
# big to carry), SmolLM2's tokenizer. Data: the first 192 records of the Alpaca subset the CPU benchmark
# uses (.gpu/alpaca192.json: RECORDS timed + the next 64 for the warm-up step).
# Expects: wheels in .whl (as benchmarks/gpu_session.sh), .gpu/tok, .gpu/smollm2_config.json,
# .gpu/alpaca192.json; carry .whl and .gpu.
# SMALL=1: a 2-layer model, 8 records, 1 thread: checks this script on the dev box in a few minutes.
# EXTRA="name|timeout|bench args;..." adds rows after the main list; ONLY_EXTRA=1 runs only those.
# Everything goes to $OUT: session.log (this output), rows.jsonl (one JSON row per run), logs.tgz.
set -u
OUT=${OUT:-cpu-bf16-out}; mkdir -p "$OUT"
SMALL=${SMALL:-0}
BUDGET=${BUDGET:-420}  # seconds for the whole script; a step is skipped when less than its timeout is left
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$SECONDS
left() { echo $((BUDGET - (SECONDS - T0))); }
if [ "${NO_WHL:-0}" != 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    $(ls .whl/*.whl | grep -v liger) && export PYTHONPATH=/tmp/site || echo "WHEEL INSTALL FAILED"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
L=$(mktemp -d /tmp/cpu_bf16_logs.XXXX)
pack() { tar czf "$OUT/logs.tgz" -C "$L" . 2>/dev/null; cp "$L/rows.jsonl" "$OUT/rows.jsonl" 2>/dev/null; }

# One logical CPU per physical core (hyperthread siblings would share the AMX/AVX units).
PHYS=$(for c in /sys/devices/system/cpu/cpu[0-9]*; do n=${c##*cpu}
         s=$(cat "$c/topology/thread_siblings_list" 2>/dev/null || echo "$n"); [ "${s%%[,-]*}" = "$n" ] && echo "$n"
       done | sort -n)
NPHYS=$(echo "$PHYS" | wc -l)
if [ "$SMALL" = 1 ]; then TH=1; else TH=${TH:-$(( NPHYS < 8 ? NPHYS : 8 ))}; fi
CPUS=$(echo "$PHYS" | head -n "$TH" | paste -sd,)
ALL=$(nproc)
{ echo "== $(date -u)"; nproc; lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|NUMA|L2|L3|MHz'
  echo "bf16 cpu flags: $(grep -o -w 'avx512_bf16\|amx_bf16\|amx_tile\|amx_int8\|avx512f\|avx512_vnni\|avx512_fp16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "physical-core cpus: $(echo "$PHYS" | paste -sd,); bench threads $TH on cpus $CPUS; all = $ALL"
  free -g | head -2; uptime
  $PY -c "import torch,transformers,peft,accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__); print(torch.backends.cpu.get_cpu_capability(), 'mkldnn bf16:', torch.ops.mkldnn._is_mkldnn_bf16_supported())"
} 2>&1 | tee "$L/env.txt"

W=/dev/shm/protege_cpu_bf16; [ -d /dev/shm ] && [ -w /dev/shm ] || W=/tmp/protege_cpu_bf16
if [ "${ONLY_EXTRA:-0}" != 1 ] || [ ! -f "$W/smol/config.json" ]; then
  rm -rf "$W"; mkdir -p "$W"
  $PY benchmarks/gpu_session_tools.py cpu-model "$W/smol" $([ "$SMALL" = 1 ] && echo --small) \
    || { echo "MODEL BUILD FAILED"; pack; exit 1; }
fi
if [ "$SMALL" = 1 ]; then RECORDS=${RECORDS:-8}; PSTEPS=2; else RECORDS=${RECORDS:-64}; PSTEPS=3; fi
COMMON=(--model "$W/smol" --data .gpu/alpaca192.json --records "$RECORDS")

bench() {  # bench NAME TIMEOUT [--threads-all] BENCH_ARGS...: one bench_train.py invocation
  local name=$1 t=$2; shift 2
  local cpus=$CPUS th=$TH
  if [ "${1:-}" = --threads-all ]; then shift; [ "$SMALL" != 1 ] && { cpus="0-$((ALL - 1))"; th=$ALL; }; fi
  [ "$SMALL" = 1 ] && t=$((t * 4))
  if [ "$(left)" -lt "$t" ] && [ "${FORCE:-0}" != 1 ]; then echo "=== SKIP $name: $(left) s left < $t"; return 0; fi
  echo "=== $name ($(left) s left): $*"; local t0=$SECONDS
  OMP_NUM_THREADS=$th timeout "$t" taskset -c "$cpus" $PY benchmarks/bench_train.py "${COMMON[@]}" --threads "$th" \
    --label "$name" "$@" > "$L/$name.log" 2>&1
  local rc=$?
  echo "=== $name rc=$rc in $((SECONDS - t0)) s"
  grep '^{' "$L/$name.log" >> "$L/rows.jsonl"
  if [ $rc -ne 0 ]; then tail -n 6 "$L/$name.log"; fi
  grep -A30 '^top ops' "$L/$name.log"
  grep '^{' "$L/$name.log" | $PY -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); print('   ', {k: r.get(k) for k in ('variant','dtype','weights_dtype','token_budget','share_prefix','steps','seconds','real_tok_s','peak_rss_gib','final_loss')})"
  pack
}

if [ "${ONLY_EXTRA:-0}" != 1 ]; then
  # 1. profiles (3 steps each, bf16): where a step's time goes
  bench prof_naive_bf16 75 --variants naive --dtype bf16 --profile-steps $PSTEPS
  bench prof_ours_bf16_fp32base 75 --variants protege --dtype bf16 --base-dtype fp32 --profile-steps $PSTEPS
  bench prof_ours_bf16_bf16base 75 --variants protege --dtype bf16 --base-dtype bf16 --profile-steps $PSTEPS
  # 2. the matrix (one epoch each), most needed first
  bench naive_bf16 70 --variants naive --dtype bf16
  bench ours_bf16_fp32base 60 --variants protege --dtype bf16 --base-dtype fp32
  bench ours_bf16_bf16base 60 --variants protege --dtype bf16 --base-dtype bf16
  bench ours_bf16_bf16base_tb2048 60 --variants protege --dtype bf16 --base-dtype bf16 --token-budget 2048
  bench naive_fp32 80 --variants naive --dtype fp32
  bench ours_fp32 60 --variants protege --dtype fp32
  bench ours_bf16_bf16base_noprefix 60 --variants protege --dtype bf16 --base-dtype bf16 --share-prefix off
  bench ours_fp32_tb2048 60 --variants protege --dtype fp32 --token-budget 2048
  bench ours_bf16_bf16base_tb1536 60 --variants protege --dtype bf16 --base-dtype bf16 --token-budget 1536
  bench ours_bf16_fp32base_tb2048 60 --variants protege --dtype bf16 --base-dtype fp32 --token-budget 2048
  bench naive_bf16_all 60 --threads-all --variants naive --dtype bf16
  bench ours_bf16_bf16base_tb2048_all 50 --threads-all --variants protege --dtype bf16 --base-dtype bf16 --token-budget 2048
fi
IFS=';' read -ra XS <<< "${EXTRA:-}"
for x in "${XS[@]}"; do
  [ -z "$x" ] && continue
  IFS='|' read -r xn xt xa <<< "$x"
  # shellcheck disable=SC2086
  bench "$xn" "$xt" $xa
done

echo "=== summary (x naive: the naive row of the same dtype and thread count)"
$PY - "$L/rows.jsonl" <<'EOF' | tee "$L/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
timed = [r for r in rows if not r.get("label", "").startswith("prof_")]
naive = {(r["dtype"], r["threads"]): r for r in timed if r["variant"] == "naive"}
print("| run | dtype | base | budget | prefix | threads | steps | s | real tok/s | x naive | peak RSS | loss |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in timed:
    n = naive.get((r["dtype"], r["threads"]))
    x = f"{n['seconds'] / r['seconds']:.2f}" if n else "-"
    print(f"| {r.get('label')} | {r['dtype']} | {r['weights_dtype']} | {r['token_budget']} | {r['share_prefix']} | "
          f"{r['threads']} | {r['steps']} | {r['seconds']} | {r['real_tok_s']} | {x} | {r['peak_rss_gib']} GiB | "
          f"{r['final_loss']:.4f} |")
EOF
uptime
pack
echo "done in $((SECONDS - T0)) s"
