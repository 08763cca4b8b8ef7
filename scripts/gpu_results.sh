#!/usr/bin/env bash
# The Frappe result tables (scripts/frappe_tables.sh: issues "A model library", "TF4CTR as a plug-in",
# "DLF") on a lent GPU machine in ONE device call: six lanes of sweeps side by side on the one GPU, then
# the light files of every finished run packed into $OUT. About 78 runs that take 1-2 days on the 2-core
# CPU box; a Frappe epoch is about a second on an H200 (bench/results/h200-2026-11-30-e2e.txt), so the
# budget (BUDGET seconds, default 450) should finish most of them; an unfinished sweep resumes in a
# later call or on the CPU (finished runs are skipped).
#
# Carry the prepared data (git-ignored; the raw ../shared data is not on the device) with the bundle's
# last part, e.g. carry [".gpu-bundle/partN", "data_prepared/frappe_x1r"], then in that call:
#   python3 .gpu-bundle/partN/unbundle.py --parts /tmp/parts/* .gpu-bundle/partN --target /tmp/site \
#     && bash scripts/gpu_results.sh
# Back in $OUT: frappe_runs.tar.gz (log.jsonl, results.json, console logs, sweep.md/json of every finished
# run, paths as under docs/runs/frappe) and results.txt (each lane's tail, the machine). Unpack at the
# repository root and commit: `tar xzf frappe_runs.tar.gz`.
# Dry run on a CPU: DEVICE=cpu BUDGET=120 EXTRA="train.epochs=1 train.max_steps_per_epoch=1" ROOT=/tmp/x
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-450}
ROOT=${ROOT:-docs/runs/frappe}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
summary="$OUT/results.txt"
stamp=$(mktemp)     # what this call wrote is newer
log() { echo "== $(date +%T) $*" | tee -a "$summary"; }

if [[ $DEVICE == cuda ]]; then
  log "build the C++ op in place"
  ln -sfn ../kernels tf4ctr_fast/kernels
  python3 setup.py -q build_ext --inplace > "$OUT/install.txt" 2>&1 || tail -20 "$OUT/install.txt"
  nvidia-smi --query-gpu=name,memory.total --format=csv >> "$summary" 2>&1
fi
[[ -f data_prepared/frappe_x1r/schema.json ]] || log "data_prepared/frappe_x1r is missing: carry it (see the top of this script)"

# Lanes: each a list of items run one after another, JOBS runs at a time; the slow models get lanes of
# their own.
LANES=("dlf" "dlf_twin afn" "table6" "table5_DualMLP table5_DualMLP_tf table5_DeepFM table5_DeepFM_tf"
       "table5_DCNv2 table5_DCNv2_tf" "table8 table8_widedeep")
pids=()
for i in "${!LANES[@]}"; do
  # shellcheck disable=SC2086  # the lane's items are separate words
  JOBS=2 THREADS=1 ROOT="$ROOT" TF4CTR_FAST="python3 -m tf4ctr_fast.cli" EXTRA="train.device=$DEVICE ${EXTRA:-}" \
    bash scripts/frappe_tables.sh ${LANES[$i]} > "$OUT/lane$i.log" 2>&1 &
  pids+=($!)
  log "lane $i: ${LANES[$i]} (pid $!)"
done
# The budget: then SIGTERM to every sweep and run of this call (their command lines name ROOT): each run
# stops at a checkpoint, each sweep writes its table; SIGKILL for whatever is left 45 s later.
any_lane_alive() { local p; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
deadline=$((SECONDS + BUDGET))
while (( SECONDS < deadline )) && any_lane_alive; do sleep 2; done
kill -TERM "${pids[@]}" 2>/dev/null    # a lane's bash then starts no further item
if pkill -TERM -f -- "$ROOT/"; then
  log "budget of ${BUDGET}s spent: SIGTERM to the runs still going"
  for _ in $(seq 45); do pgrep -f -- "$ROOT/" > /dev/null || break; sleep 1; done
  pkill -KILL -f -- "$ROOT/" && log "SIGKILL to the runs still there after 45 s"
fi
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; log "lane $i exit $?"
  tail -4 "$OUT/lane$i.log" >> "$summary"
done

# The light files of the runs this call finished (an unfinished run's folder stays behind: without its
# last.pt it could not be resumed), and the sweeps' tables
files=$(mktemp)
find "$ROOT" -name results.json -newer "$stamp" | while read -r r; do
  d=$(dirname "$r"); echo "$r"; echo "$d/log.jsonl"; [[ -f "$d.console.txt" ]] && echo "$d.console.txt"
done > "$files"
find "$ROOT" \( -name sweep.md -o -name sweep.json \) -newer "$stamp" >> "$files"
tar czf "$OUT/frappe_runs.tar.gz" -T "$files" 2>>"$summary"
log "packed $(grep -c results.json "$files") finished runs into frappe_runs.tar.gz"
cat "$OUT"/lane*.log > "$OUT/lanes.txt" 2>/dev/null; rm -f "$OUT"/lane*.log
ls -la "$OUT" | tee -a "$summary"
