#!/usr/bin/env bash
# The Frappe_x1r result tables still to run (docs/results.md), one sweep folder per item, with the paper's
# shared settings (configs/frappe.yaml: d 16, batch 10000, emb_reg 0.1, dropout 0.2, BatchNorm, Adam 1e-3,
# the FuxiCTR protocol) and every MLP the paper's [400, 400, 400] as in scripts/frappe_zoo.sh:
#   afn           issue "A model library": AFN+ at seed 2023 (done: docs/runs/frappe/zoo/AFN; skipped)
#   table8*       issue "TF4CTR as a plug-in", paper Table VIII: TF4CTR-DeepFM / -xDeepFM / -WideDeep
#                 (their bases: docs/runs/frappe/zoo/{DeepFM,xDeepFM,WideDeep}, same seeds)
#   table5_*      Table V: DualMLP, DeepFM, DCNv2 with bce / focal / rce (DeepFM's and DCNv2's bce: the
#                 zoo's runs, same settings and seeds, docs/runs/frappe/zoo/{DeepFM,DCNv2}; DualMLP's zoo
#                 runs predate the model library, so it runs bce again),
#                 and each "with the TF loss":
#                 TF4CTR around the same body on the shared embedding with the base's own fusion
#                 (DualMLP: MLPs, sum; DeepFM: TF4CTR-DeepFM, sum; DCNv2: CrossNetV2 + MLP, CF)
#   table6        Table VI: TF4CTR with every SSEM x DFM, seed 2023
#   dlf*          issue "DLF": DLF with attention none / cross / self, and TF4CTR-DLF
#
#   bash scripts/frappe_tables.sh list                 # the items and their run counts
#   bash scripts/frappe_tables.sh table8 table6        # these items, one after another
#   JOBS=4 EXTRA="train.device=cuda" bash scripts/frappe_tables.sh all     # on a GPU (scripts/gpu_results.sh)
#
# JOBS: runs at once per sweep (default 1); THREADS: train.num_threads (default 1, 0 on CUDA: torch's);
# EXTRA: more key=value overrides for every run; ROOT: where the sweep folders go (default
# docs/runs/frappe). A finished run (results.json) is skipped, so an item continues where it stopped.
set -euo pipefail
{ # the whole script is one block, read before it runs: editing the file during a long run cannot
  # change what this run executes (bash reads a script as it goes)
cd "$(dirname "$0")/.."
JOBS=${JOBS:-1}
THREADS=${THREADS:-1}
EXTRA=${EXTRA:-}
ROOT=${ROOT:-docs/runs/frappe}
TF=${TF4CTR_FAST:-tf4ctr-fast}
H3='[400,400,400]'
ITEMS=(afn table8 table8_widedeep table5_DualMLP table5_DualMLP_tf table5_DeepFM table5_DeepFM_tf
       table5_DCNv2 table5_DCNv2_tf table6 dlf dlf_twin)

# item -> "folder|seeds|grid flags|overrides"; the folder is under ROOT
spec() {
  case "$1" in
    afn)               echo "zoo/AFN|2023|--grid model.name=AFN|" ;;
    table8)            echo "table8|2023-2025|--grid model.name=TF4CTR-DeepFM,TF4CTR-xDeepFM|" ;;
    table8_widedeep)   echo "table8_widedeep|2023-2025|--grid model.name=TF4CTR-WideDeep|model.ssem=share" ;;
    table5_DualMLP)    echo "table5/DualMLP|2023-2025|--grid model.loss=bce,focal,rce|model.name=DualMLP" ;;
    table5_DualMLP_tf) echo "table5/DualMLP_tf|2023-2025|--grid model.loss=twin_focus|model.name=TF4CTR model.ssem=share model.dfm=sum" ;;
    table5_DeepFM)     echo "table5/DeepFM|2023-2025|--grid model.loss=focal,rce|model.name=DeepFM model.params.hidden_units=$H3" ;;
    table5_DeepFM_tf)  echo "table5/DeepFM_tf|2023-2025|--grid model.loss=twin_focus|model.name=TF4CTR-DeepFM model.ssem=share model.dfm=sum" ;;
    table5_DCNv2)      echo "table5/DCNv2|2023-2025|--grid model.loss=focal,rce|model.name=DCNv2 model.params.parallel_dnn_hidden_units=$H3 model.params.stacked_dnn_hidden_units=$H3" ;;
    table5_DCNv2_tf)   echo "table5/DCNv2_tf|2023-2025|--grid model.loss=twin_focus|model.name=TF4CTR model.params.simple_encoder={\"name\":\"CrossNetV2\"} model.ssem=share model.dfm=CF" ;;
    table6)            echo "table6|2023|--grid model.ssem=SER,GM,MoE,share --grid model.dfm=WSF,VF,CF,MoEF,sum|model.name=TF4CTR" ;;
    dlf)               echo "dlf|2023-2025|--grid model.params.attention=none,cross,self|model.name=DLF" ;;
    dlf_twin)          echo "dlf_twin|2023-2025|--grid model.name=TF4CTR-DLF|" ;;
    *) echo "unknown item '$1' (known: ${ITEMS[*]})" >&2; exit 2 ;;
  esac
}

runs_of() {   # seeds x the product of the grid's value counts
  local seeds=$1 grid=$2 n=1 a b
  if [[ $seeds == *-* ]]; then a=${seeds%-*}; b=${seeds#*-}; n=$((b - a + 1)); fi
  for word in $grid; do [[ $word == --grid ]] || { local v=${word#*=}; n=$((n * ($(tr -cd , <<<"$v" | wc -c) + 1))); }; done
  echo "$n"
}

[[ $# -ge 1 ]] || { echo "usage: $0 list | all | ITEM... (items: ${ITEMS[*]})" >&2; exit 2; }
if [[ $1 == list ]]; then
  for item in "${ITEMS[@]}"; do
    IFS='|' read -r out seeds grid ovr <<<"$(spec "$item")"
    printf '%-18s %3s runs  %s/%s  seeds %s  %s %s\n' "$item" "$(runs_of "$seeds" "$grid")" "$ROOT" "$out" "$seeds" "$grid" "$ovr"
  done
  exit 0
fi
[[ $1 == all ]] && set -- "${ITEMS[@]}"
for item in "$@"; do spec "$item" >/dev/null; done     # every name checked before the first run
for item in "$@"; do
  IFS='|' read -r out seeds grid ovr <<<"$(spec "$item")"
  # shellcheck disable=SC2086  # grid flags and overrides are separate words
  # the paper's tables are the reference backend's (the default backend is "auto"); EXTRA may say otherwise
  $TF sweep --config configs/frappe.yaml --seeds "$seeds" $grid --jobs "$JOBS" --out "$ROOT/$out" \
    model.backend=reference $ovr train.num_threads="$THREADS" train.progress=false $EXTRA
done
exit
}
