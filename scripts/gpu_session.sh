#!/usr/bin/env bash
# Everything a lent GPU machine runs for the GPU issue, in ONE device call of at most ~8 minutes (the
# machine keeps nothing between calls; device time is 15 minutes per issue, its start included).
#
# Before it, per DEVELOPERS.md: `bash ../shared/gpu/bundle.sh .gpu-bundle` here, one `run` per part
# copying it to /tmp/parts, then in the call that carries the last part N:
#   python3 .gpu-bundle/partN/unbundle.py --parts /tmp/parts/* .gpu-bundle/partN --target /tmp/site \
#     && bash scripts/gpu_session.sh
# No pip install there: the image's `pip` belongs to another interpreter than `python3`, and
# `python3 -m pip install -e .` falls back to `setup.py develop`, which wants setuptools from the
# network. So the C++ op is built in place (setup.py build_ext --inplace), the checkout goes on
# PYTHONPATH, and tf4ctr_fast/kernels is a link to kernels/ (what setup.py's package_dir maps).
# Each step has its own time limit, so one slow step cannot eat the rest. Results land in $OUT (at most
# 8 files come back): steps.txt (machine, versions, every step's tail), tests.txt, install.txt,
# bench.json, zoo.json, throughput.json, profile.txt, e2e.txt. Commit them under bench/results/ (docs/benchmarks.md).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
steps="$OUT/steps.txt"
log() { echo "== $(date +%T) $*" | tee -a "$steps"; }
# step NAME SECONDS CMD...: run with a time limit, whole output to $OUT/NAME.txt unless told otherwise
step() { local name=$1 limit=$2; shift 2; log "$name (limit ${limit}s)"
         timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
         tail -15 "$OUT/$name.txt" | tee -a "$steps"; log "$name: exit $rc"; }

log "build the C++ op in place"
ln -sfn ../kernels tf4ctr_fast/kernels
python3 setup.py -q build_ext --inplace > "$OUT/install.txt" 2>&1 || tail -20 "$OUT/install.txt"
log "machine"; nvidia-smi >> "$steps" 2>&1
python3 - >> "$steps" 2>&1 <<'EOF'
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__, torch.cuda.get_device_name())
for m in ("fbgemm_gpu", "torchrec", "tf4ctr_fast.ops", "tf4ctr_fast.kernels.twin_head_triton", "tf4ctr_fast.models"):
    try:
        __import__(m); print("import", m, "ok")
    except Exception as e:
        print("import", m, "FAILED:", type(e).__name__, e)
print("C++ op registered:", hasattr(torch.ops.tf4ctr_fast, "twin_head"))
EOF
tail -6 "$steps"

step tests 75 python3 -m pytest -q -p no:cacheprovider --maxfail 20 -rfE tests/test_twin_head_triton.py \
  tests/test_embedding_ser_tables.py tests/test_embedding_engine_model.py tests/test_streaming_loader.py \
  tests/test_loader.py

step throughput 130 python3 scripts/gpu_throughput.py --out "$OUT" --budget-s 90
mv "$OUT/throughput.txt" "$OUT/throughput-log.txt" 2>/dev/null; cat "$OUT/throughput-log.txt" >> "$steps"; rm -f "$OUT/throughput-log.txt"

step bench 120 python3 -m pytest bench/test_bench_twin_head.py bench/test_bench_train_step.py \
  --benchmark-only -q -p no:cacheprovider --bench-size medium \
  --benchmark-json "$OUT/bench.json"
cat "$OUT/bench.txt" >> "$steps"; rm -f "$OUT/bench.txt"

# Every zoo model's step on both backends, relative to DNN (paper Table IX style); into the bench JSON's
# neighbour (8 files come back at most: steps, tests, install, bench, zoo, throughput, profile, e2e)
step zoo 90 python3 -m pytest bench/test_bench_zoo.py --benchmark-only -q -p no:cacheprovider --bench-size small \
  -k "vocab100k or vocab5.5M" --benchmark-json "$OUT/zoo.json"
cat "$OUT/zoo.txt" >> "$steps"; rm -f "$OUT/zoo.txt"

# The trainer end to end (prepare excluded): synthetic Criteo-schema data, TF4CTR Criteo config, engine.
step e2e 75 python3 -m tf4ctr_fast.cli train train.device=cuda model.backend=torchrec dataset.synthetic.rows=1000000 \
  dataset.prepared_dir=/tmp/e2e_data train.out_dir=/tmp/e2e_run train.epochs=1 train.progress=false
cat /tmp/e2e_run/results.json >> "$OUT/e2e.txt" 2>/dev/null
# the same data at batch 65536 (prepared already): what the trainer takes when the step is not the limit
timeout 45 python3 -m tf4ctr_fast.cli train train.device=cuda model.backend=torchrec dataset.synthetic.rows=1000000 \
  dataset.prepared_dir=/tmp/e2e_data train.out_dir=/tmp/e2e_run65k train.epochs=1 train.progress=false \
  train.batch_size=65536 >> "$OUT/e2e.txt" 2>&1; tail -3 "$OUT/e2e.txt" | tee -a "$steps"

log "done"; ls -la "$OUT" | tee -a "$steps"
