#!/usr/bin/env bash
# Issue 17 (priors and posteriors from the lectures): the standard VAE, the VampPrior, the IAF posterior and
# the autoregressive-flow prior at one budget, MLP networks 300-300 and z = 40 as in the VampPrior paper,
# on the full test set (10,000 images, dynamic binarization, IWAE k = 5000 with standard errors; mutual
# information, marginal KL and active units from `vaelab eval --protocol full`). Results (config, metrics,
# eval JSON and text, samples; not weights) go to experiments/priors_flows/<name>/.
# Usage: bash experiments/priors_flows.sh [DATA_DIR] [NAMES...]
#   names: normal vamp iaf af (default all); STEPS=N (default 30000: 50 epochs of batch 100, Adam 1e-3).
# The papers train for up to 2,000 epochs with early stopping (VampPrior: ~1.2M steps of batch 100).
# Each name runs on one CPU thread (OMP_NUM_THREADS=1), so two names can run side by side on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-normal vamp iaf af}
steps=${STEPS:-30000}
out=experiments/priors_flows
mkdir -p "$out"
export OMP_NUM_THREADS=1

for name in $names; do
  run=runs/flows_$name
  rm -rf "$run"
  mkdir -p "$out/$name"
  case $name in
    normal) model=(vae) ;;
    vamp)   model=(vae --prior vamp --components 500) ;;
    iaf)    model=(vae --posterior iaf --flow-steps 2) ;;
    af)     model=(vae --prior af --flow-steps 2) ;;
  esac
  vaelab train "${model[@]}" --z-dim 40 --steps "$steps" --seed 0 --data-dir "$data_dir" --out "$run" --no-progress | tee "$out/$name/train.txt"
  vaelab eval "$run" --protocol full --iw 1,5000 | tee "$out/$name/eval-full.txt"
  vaelab sample "$run"
  cp "$run"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png} "$run"/eval-*.json "$out/$name/"
done
