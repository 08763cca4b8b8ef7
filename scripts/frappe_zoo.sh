#!/usr/bin/env bash
# The model zoo on Frappe_x1r with the paper's shared settings (docs/results.md "Model zoo on Frappe"):
# configs/frappe.yaml (d 16, batch 10000, emb_reg 0.1, dropout 0.2, BatchNorm, Adam 1e-3, the FuxiCTR
# protocol), every model's own structure keys at their FuxiCTR defaults except its main MLP, which is
# [400, 400, 400] as in the paper. One sweep folder per model under docs/runs/frappe/zoo/.
#
#   bash scripts/frappe_zoo.sh            # every run, one after another
#   bash scripts/frappe_zoo.sh a & bash scripts/frappe_zoo.sh b &    # two lanes side by side
#
# A run whose results.json exists is skipped, so the script continues where it was stopped.
# DNN, DualMLP and TF4CTR at these settings are in docs/runs/frappe/sweep_decay1 and the older folders.
set -euo pipefail
{ # the whole script is one block, read before it runs: editing the file during a long run cannot
  # change what this run executes (bash reads a script as it goes)
lane="${1:-all}"
H3='[400,400,400]'
declare -A OVR=(
  [LR]=""
  [FM]=""
  [WideDeep]="model.params.hidden_units=$H3"
  [DeepFM]="model.params.hidden_units=$H3"
  [DCN]="model.params.dnn_hidden_units=$H3"
  [DCNv2]="model.params.parallel_dnn_hidden_units=$H3 model.params.stacked_dnn_hidden_units=$H3"
  [xDeepFM]="model.params.dnn_hidden_units=$H3"
  [AutoInt]="model.params.dnn_hidden_units=$H3"
  [AFN]=""
  [EDCN]=""
  [EulerNet]=""
  [FinalMLP]=""
)
# (model seeds) in the order each lane runs them: the six multi-seed models first at seed 2023, AFN
# last (about 40 minutes per epoch at 1 thread on a loaded 2-core box: its 1200 logarithmic neurons
# make a 19200-wide MLP input)
LANE_A=("DeepFM 2023" "xDeepFM 2023" "DCN 2023" "LR 2023" "DeepFM 2024-2025" "DCN 2024-2025"
        "EulerNet 2023" "xDeepFM 2024-2025" "AFN 2023")
LANE_B=("WideDeep 2023" "DCNv2 2023" "AutoInt 2023" "FM 2023" "EDCN 2023" "FinalMLP 2023"
        "WideDeep 2024-2025" "DCNv2 2024-2025" "AutoInt 2024-2025")
case "$lane" in
  a) plan=("${LANE_A[@]}") ;;
  b) plan=("${LANE_B[@]}") ;;
  all) plan=("${LANE_A[@]}" "${LANE_B[@]}") ;;
  *) echo "usage: $0 [a|b|all]" >&2; exit 2 ;;
esac
for item in "${plan[@]}"; do
  read -r model seeds <<<"$item"
  # shellcheck disable=SC2086  # the overrides are separate words
  # the reference backend, as in the committed runs (the default backend is "auto" since)
  tf4ctr-fast sweep --config configs/frappe.yaml --seeds "$seeds" --grid "model.name=$model" \
    --jobs 1 --out "docs/runs/frappe/zoo/$model" model.backend=reference ${OVR[$model]} train.num_threads=1
done
exit
}
