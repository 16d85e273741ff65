#!/usr/bin/env bash
# Multi-GPU scaling on one host (issue #10), one command, under 9 minutes on 2 x H100 80GB:
#   sd15-x1, sd15-x2  sd15 512, 20 steps, synthetic weights: `lightdiff batch` of 160 images on cuda:0, then on
#                     cuda:0,cuda:1. Rows give images/s from the command's start (imports, model load, compile
#                     included) and in steady state (after each worker's first image); the x2 row its scaling
#                     efficiency T2 / (2 T1) on both.
#   qwen-x1, qwen-cp2 qwen-image-2512 1024, 20 steps, synthetic weights: seconds per image on one GPU, then split
#                     over 2 GPUs with --context-parallel 2 (Ulysses); each loads, runs once to warm up, then twice
#                     timed. The prompt has 16 tokens, so the split is even (diffusers' plain Ulysses).
#   qwen-cp2-uneven,  only while time is left: a 13-token prompt (diffusers' uneven "anything" split, one size
#   qwen-cp2-ring     exchange per attention) against the same 1-GPU row, then ring attention.
#
#   tools/scale_bench.sh                 rows in $OUT/scale.jsonl (or scale-out/), table in $OUT/scale-table.txt
#   SCALE_DRY=1 tools/scale_bench.sh     the same steps on the CPU with the tiny twins (a check of the script)
#   SCALE_COUNT=N                        sd15 images per batch step (default 160)
#   SCALE_ONLY_SD15=1                    only the two sd15 throughput steps
#
# Each step runs under `timeout`, given what is left of SCALE_BUDGET_S (default 500 s, so the whole command
# stays under 9 minutes with the setup), and writes its row as soon as it ends; a batch cut short still gives
# the rates of the images it made. Estimated on 2 x H100 (from the 2026-11-26 rows: sd15 0.62 s per image in
# the engine, qwen 1024 7.5 s, weights built on the GPU in ~5 s): setup 40 s, sd15-x1 150 s, sd15-x2 90 s,
# qwen-x1 50 s, qwen-cp2 50 s, the two optional steps 50 s each: about 8 min (the budget drops the optional
# steps first).
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
if ! python3 -c "import diffusers, pydantic" 2>/dev/null; then
  source tools/device_env.sh  # wheels carried in .whl/ (diffusers, pydantic, nvidia-ml-py)
fi
export PYTHONPATH="${PYTHONPATH:-}:$PWD/src" PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
# compile once here, so no measured process pays for compiling modules it imports for the first time
python3 -m compileall -q -j 0 src /tmp/site >/dev/null 2>&1 || true
# NVLink multicast stays off on shared hosts (the spawned ranks inherit these)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
BUDGET="${SCALE_BUDGET_S:-500}"
OUT_DIR="${OUT:-scale-out}"
WORK="${SCALE_WORK:-/tmp/lightdiff-scale}"   # images and manifests: not under $OUT (few files come back)
ROWS="$OUT_DIR/scale.jsonl"
LOGS="$WORK/logs"
rm -rf "$WORK"
mkdir -p "$OUT_DIR" "$LOGS"
B=(python3 tools/scale_bench.py)

if [ "${SCALE_DRY:-0}" = 1 ]; then  # CPU: tiny twins, few steps, gloo ranks
  SD=(--model tiny-sd15 --weights twin --size 64 --steps 4); COUNT=16; DEV1=cpu; DEV2=cpu,cpu
  QW=(--model tiny-qwen-image --weights twin --size 64 --steps 4); QDEV=(--device cpu); RING=0
else
  SD=(--model sd15 --weights synthetic --size 512 --steps 20); COUNT=${SCALE_COUNT:-160}; DEV1=cuda:0; DEV2=cuda:0,cuda:1
  QW=(--model qwen-image-2512 --weights synthetic --size 1024 --steps 20); QDEV=(); RING=1
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
# limit WANT RESERVE: WANT seconds, or less so that RESERVE seconds stay for the steps after this one
limit() { local l=$(( $(left) - $2 )); (( l < $1 )) && echo "$l" || echo "$1"; }
status_of() { case "$1" in 124|137) echo timeout ;; *) echo error ;; esac; }

batch_step() {  # NAME DEVICES WANT RESERVE
  local name=$1 devices=$2 lim rc started variant=lightdiff
  lim=$(limit "$3" "$4")
  [[ "$devices" == *,* ]] && variant="lightdiff batch x$(( $(tr -cd , <<<"$devices" | wc -c) + 1 ))"
  if (( lim < 20 )); then
    "${B[@]}" failed "${SD[@]}" --kind batch --variant "$variant" --step "$name" --devices "$devices" --status timeout \
      --reason "not run: $(left) s of the budget left" -o "$ROWS"
    return
  fi
  echo "== $name: lightdiff batch on $devices (limit $lim s)"
  started=$(date +%s.%N)
  timeout -k 10 "$lim" python3 -m lightdiff batch "$WORK/jobs.jsonl" -o "$WORK/$name" --devices "$devices" \
    >"$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 3 "$LOGS/$name.log"
  "${B[@]}" batch-row --jobs "$WORK/jobs.jsonl" --out-dir "$WORK/$name" --devices "$devices" --started "$started" \
    --rc "$rc" -o "$ROWS"
}

latency_step() {  # NAME VARIANT WANT RESERVE [latency args...]
  local name=$1 variant=$2 lim rc
  lim=$(limit "$3" "$4")
  shift 4
  if (( lim < 30 )); then
    echo "== $name: not run, $(left) s of the budget left"
    "${B[@]}" failed "${QW[@]}" --variant "$variant" --step "$name" --status timeout \
      --reason "not run: $(left) s of the budget left" -o "$ROWS"
    return
  fi
  echo "== $name (limit $lim s)"
  timeout -k 10 "$lim" "${B[@]}" latency "${QW[@]}" "${QDEV[@]}" --runs 3 --images "$WORK/images-$name" \
    -o "$ROWS" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  tail -n 2 "$LOGS/$name.log"
  if [ "$rc" != 0 ]; then
    "${B[@]}" failed "${QW[@]}" --variant "$variant" --step "$name" --status "$(status_of $rc)" \
      --reason "exit $rc: $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 3 | tr '\n' ' ')" -o "$ROWS"
  fi
}

python3 -m lightdiff env >"$OUT_DIR/env.txt" 2>&1
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv >>"$OUT_DIR/env.txt" 2>&1 || true
"${B[@]}" jobs "${SD[@]}" --count "$COUNT" -o "$WORK/jobs.jsonl"
echo "setup: $(( $(date +%s) - START )) s"

# the reserves keep time for the required steps after each one
if [ "${SCALE_ONLY_SD15:-0}" = 1 ]; then  # the throughput steps alone (a rerun with less device time)
  batch_step sd15-x1 "$DEV1" 170 80
  batch_step sd15-x2 "$DEV2" 110 0
  "${B[@]}" table "$ROWS" | tee "$OUT_DIR/scale-table.txt"
  tar czf "$OUT_DIR/logs.tgz" -C "$WORK" logs
  echo "total: $(( $(date +%s) - START )) s"
  exit 0
fi
batch_step sd15-x1 "$DEV1" 170 220
batch_step sd15-x2 "$DEV2" 110 130
latency_step qwen-x1 lightdiff 70 70
latency_step qwen-cp2 "lightdiff cp2 ulysses" 90 0 --context-parallel 2
latency_step qwen-cp2-uneven "lightdiff cp2 ulysses uneven" 70 0 --context-parallel 2 --prompt "a lighthouse at dusk"
if [ "$RING" = 1 ]; then
  latency_step qwen-cp2-ring "lightdiff cp2 ring" 70 0 --context-parallel 2 --cp-mode ring
fi

"${B[@]}" table "$ROWS" | tee "$OUT_DIR/scale-table.txt"
tar czf "$OUT_DIR/logs.tgz" -C "$WORK" logs
echo "total: $(( $(date +%s) - START )) s"
