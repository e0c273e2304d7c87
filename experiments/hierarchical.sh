#!/usr/bin/env bash
# Issue 18 (hierarchical latent variables): one stochastic layer, two layers with bottom-up inference, two
# layers with the Ladder VAE's top-down inference, and two layers with a VampPrior on the top layer, at one
# budget: MLPs 300-300, z = 40 per layer (the VampPrior paper's HVAE shape), 30,000 steps of batch 100
# (50 epochs, Adam 1e-3), seed 0, the same budget as experiments/priors_flows. Evaluated on the full test set
# (10,000 images, dynamic binarization, IWAE k = 5000 with standard errors; KL and active units per layer from
# `vaelab eval --protocol full`). Results (config, metrics, eval JSON and text, samples; not weights) go to
# experiments/hierarchical/<name>/.
# Usage: bash experiments/hierarchical.sh [DATA_DIR] [NAMES...]
#   names: one bottom_up ladder ladder_warmup vamp (default all); STEPS=N (default 30000). ladder_warmup adds KL
#   annealing over the first 10,000 steps (the Ladder VAE paper warms up the KL). The README's one-layer row is
#   experiments/priors_flows' standard VAE (the same settings), so `one` need not be run again.
# Each name runs on one CPU thread (OMP_NUM_THREADS=1), so two names can run side by side on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-one bottom_up ladder ladder_warmup vamp}
steps=${STEPS:-30000}
out=experiments/hierarchical
mkdir -p "$out"
export OMP_NUM_THREADS=1

for name in $names; do
  run=runs/hierarchical_$name
  rm -rf "$run"
  mkdir -p "$out/$name"
  case $name in
    one)       model=(hvae --set model.z_dims=40) ;;
    bottom_up) model=(hvae --inference bottom-up) ;;
    ladder)    model=(hvae --inference ladder) ;;
    ladder_warmup) model=(hvae --inference ladder --kl-warmup 10000) ;;
    vamp)      model=(hvae --inference bottom-up --prior vamp --components 500) ;;
    *) echo "hierarchical.sh: unknown name '$name' (one bottom_up ladder ladder_warmup vamp)" >&2; exit 2 ;;
  esac
  vaelab train "${model[@]}" --steps "$steps" --seed 0 --data-dir "$data_dir" --out "$run" --no-progress | tee "$out/$name/train.txt"
  vaelab eval "$run" --protocol full --iw 1,5000 | tee "$out/$name/eval-full.txt"
  vaelab sample "$run"
  cp "$run"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png} "$run"/eval-*.json "$out/$name/"
done
