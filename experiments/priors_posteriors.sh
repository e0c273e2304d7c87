#!/usr/bin/env bash
# Issue 3's experiments at the reference step budget (20,000 steps, batch 100, seed 0):
# GMVAE (cs236 + full protocol), full-covariance posterior, IWAE-trained with k = 5 and k = 50,
# each evaluated on the full 10,000-image test set with k = 1000 (with active units); the VAE
# baseline comes from experiments/vae_baseline.sh (runs/vae_baseline), re-evaluated the same way.
# Results go to experiments/priors_posteriors/<name>/ and the table to experiments/priors_posteriors/compare.md (+ .csv, curves.png).
# Usage: bash experiments/priors_posteriors.sh [DATA_DIR] [NAMES...]    (names: gmvae fullcov iwae5 iwae50 vae)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-gmvae fullcov iwae5 iwae50 vae}
out=experiments/priors_posteriors
mkdir -p "$out"

train() {  # name, then vaelab train arguments
  local name=$1; shift
  rm -rf "runs/$name"
  vaelab train "$@" --seed 0 --data-dir "$data_dir" --out "runs/$name" --no-progress | tee "runs/$name.train.txt"
}

for name in $names; do
  case $name in
    gmvae)   train gmvae gmvae ;;
    fullcov) train fullcov vae --posterior full ;;
    iwae5)   train iwae5 vae --objective iwae --k 5 ;;
    iwae50)  train iwae50 vae --objective iwae --k 50 ;;
    vae)     [ -f runs/vae_baseline/model.safetensors ] || bash experiments/vae_baseline.sh "$data_dir"
             rm -rf runs/vae && cp -r runs/vae_baseline runs/vae ;;
  esac
  run=runs/$name
  mkdir -p "$out/$name"
  [ "$name" = gmvae ] && vaelab eval "$run" --protocol cs236 | tee "$out/$name/eval-cs236.txt"
  vaelab eval "$run" --protocol full --iw 1,10,100,1000 | tee "$out/$name/eval-full.txt"
  vaelab sample "$run"
  cp "$run"/{config.json,summary.json,metrics.jsonl,eval-full.json,samples.png,reconstructions.png} "$out/$name/"
  [ -f "$run/eval-cs236.json" ] && cp "$run/eval-cs236.json" "$out/$name/"
done
vaelab compare runs/{vae,iwae5,iwae50,fullcov,gmvae} --out "$out"
