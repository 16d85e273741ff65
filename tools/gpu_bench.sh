#!/usr/bin/env bash
# The full benchmark grid on one GPU (written for an H100 80GB): sd15 and qwen-image-2512 at 512, 768 and
# 1024, at the whole card and at a 24 GB budget, each case also with plain diffusers (--baseline).
#
#   tools/gpu_bench.sh [PHASE ...]      PHASE: sd15 | qwen | qwen-load | all (default: sd15 qwen)
#
# Rows are appended to $OUT/bench.jsonl (or bench-out/bench.jsonl without $OUT); case logs are tarred beside it.
# Wall time on one H100 80GB (2026-11-26, a fresh machine; "measured" where a run covered the phase):
#   sd15       every size at batch 1, batches 2 and 4 at 512, the 10x2 batch test, the OOM boundary,
#              ControlNet and hires-fix rows; weights written once as safetensors (2.1 GB, 14 s) and
#              timed from disk. 4 processes (2 budgets x 2 variants), --runs 3, 47 rows.  measured 322 s
#   qwen       every size at batch 1, --runs 2, weights built on the device (--weights synthetic; a 41 GB
#              transformer read from disk costs ~30 s per process at the 1.5-1.7 GB/s measured here).
#              whole card: resident, 75 s per variant (measured). 24 GB: the planner's plans (one process
#              per plan; 512 ran as fp8-group-offload, 6.5 s/image) each build 58 GB on the GPU, move them
#              to host RAM (42 s) and apply the plan (19 s); plain diffusers runs out of memory placing
#              the weights (~50 s, measured). Estimated 6.5-7.5 min for the phase.
#   qwen-load  one cold start of qwen-image-2512 from safetensors on disk (transformer + VAE cached, 41 GB;
#              the 16.6 GB text encoder is left out when the disk has no room and built on the device;
#              the row names both lists). Writing the cache is once per machine; sd15 loaded at 0.35 GB/s
#              through from_pretrained against a 1.7 GB/s disk, so 41-58 GB take 2-3 min. estimated 4-5 min
# sd15 + qwen is about 12-13 min: more than one 10-minute device command. Run `tools/gpu_bench.sh sd15`
# and `tools/gpu_bench.sh qwen` as two commands (qwen-load as a third). Set LIGHTDIFF_HOME to keep the
# weight caches elsewhere.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import diffusers, pydantic" 2>/dev/null; then
  source tools/device_env.sh  # wheels carried in .whl/ (diffusers, pydantic, nvidia-ml-py)
fi
export PYTHONPATH="${PYTHONPATH:-}:$PWD/src" PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
# compile once here, so no measured process pays for compiling modules it imports for the first time
python3 -m compileall -q -j 0 src /tmp/site >/dev/null 2>&1 || true
OUT_DIR="${OUT:-bench-out}"
LOGS="${BENCH_LOGS:-/tmp/lightdiff-bench-logs}"  # one log per case process; tarred into $OUT_DIR after each phase
mkdir -p "$OUT_DIR" "$LOGS"
ROWS="$OUT_DIR/bench.jsonl"
bench() { python3 -m lightdiff bench --device cuda --steps 20 --timeout 420 -o "$ROWS" --logs "$LOGS" "$@"; }

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(sd15 qwen)
[ "${phases[0]}" = all ] && phases=(sd15 qwen qwen-load)
python3 -m lightdiff env | tee "$OUT_DIR/env.txt"
for phase in "${phases[@]}"; do
  start=$(date +%s)
  case "$phase" in
    sd15)
      bench --models sd15 --sizes 512,768,1024 --batches 1,2,4 --runs 3 --vram-budget none,24 --baseline \
            --batch-test 10x2 --boundary --workflows controlnet,hires_fix --weights synthetic-disk ;;
    qwen)
      bench --models qwen-image-2512 --sizes 512,768,1024 --batches 1 --runs 2 --vram-budget none,24 --baseline \
            --weights synthetic --no-predictions ;;
    qwen-load)
      bench --models qwen-image-2512 --sizes 1024 --runs 1 --weights synthetic-disk --no-predictions ;;
    *) echo "unknown phase $phase (sd15, qwen, qwen-load, all)" >&2; exit 2 ;;
  esac
  echo "phase $phase: $(( $(date +%s) - start )) s"
  tar czf "$OUT_DIR/logs.tgz" -C "$(dirname "$LOGS")" "$(basename "$LOGS")"
done
