#!/usr/bin/env bash
# Everything a lent GPU machine should run for issues "Fused twin-focus head" (Triton bandwidth) and
# "GPU performance", in ONE device call (the machine keeps nothing between calls). Not yet run on a GPU:
# no GPU was lent in sessions 1-2, so expect to fix the first failure it finds.
#
# Before it, per DEVELOPERS.md: `bash ../shared/gpu/bundle.sh .gpu-bundle` here, one `run` per part
# copying it to /tmp/parts, then in the call that carries the last part N:
#   python3 .gpu-bundle/partN/unbundle.py --parts /tmp/parts/* .gpu-bundle/partN --target /tmp/site \
#     && PYTHONPATH=/tmp/site bash scripts/gpu_session.sh
# Results land in $OUT (the device tool brings them back): commit them under bench/results/.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-/tmp/site}
log() { echo "== $*" | tee -a "$OUT/steps.txt"; }

log "machine"; nvidia-smi | tee "$OUT/nvidia-smi.txt"; python3 -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)" | tee -a "$OUT/steps.txt"

log "install (builds the C++ op with CMake)"
pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.txt" 2>&1 || { tail -30 "$OUT/install.txt"; exit 1; }

log "parity: Triton kernel compiled on CUDA, CUDA dispatch of the op, engine model"
python3 -m pytest -q tests/test_twin_head_triton.py tests/test_twin_head_cpu.py tests/test_embedding_ser_tables.py \
  tests/test_embedding_engine_model.py tests/test_streaming_loader.py tests/test_loader.py -x -p no:cacheprovider \
  2>&1 | tee "$OUT/tests.txt" | tail -5

log "benchmark suite (size full on CUDA): parity, then timings against the reference"
name="$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '-'))")-$(date +%F)"
timeout 420 python3 -m pytest bench/ --benchmark-only -q --benchmark-json "$OUT/$name.json" 2>&1 | tail -25 | tee "$OUT/bench.txt"

log "done; files in $OUT"; ls -la "$OUT"
