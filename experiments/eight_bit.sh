#!/usr/bin/env bash
# Likelihoods of 8-bit pixels beside the binarized Bernoulli: the MLP VAE (300-300, z = 10) on MNIST with the
# Bernoulli likelihood (dynamically binarized pixels) and with the discretized logistic mixture (10 components,
# the 8-bit pixels themselves), at one stated budget. Each run is evaluated on all 10,000 test images
# (`vaelab eval --protocol full --iw 1,10`): nats, and bits per dimension for the 8-bit likelihood. The two
# likelihoods model different data (binary pixels against 256 levels), so their nats are not comparable; bits/dim
# are reported for the 8-bit one only.
# Results (config, metrics, eval JSON, sample grids; not weights) go to experiments/eight_bit/<name>/.
# Usage: bash experiments/eight_bit.sh [DATA_DIR] [NAMES...]; names: bernoulli dlogistic (default both);
# STEPS=N (default 5000), RUNS=DIR (run directories, default ~/vaelab-runs/eight_bit), DEVICE=cpu|cuda (default auto).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-bernoulli dlogistic}
steps=${STEPS:-5000}
runs=${RUNS:-$HOME/vaelab-runs/eight_bit}
device=${DEVICE:-auto}
out=experiments/eight_bit
mkdir -p "$out" "$runs"

for name in $names; do
  case $name in
    bernoulli) likelihood=(--likelihood bernoulli) ;;
    dlogistic) likelihood=(--likelihood dlogistic --mixtures 10) ;;
    *) echo "eight_bit.sh: unknown name '$name' (bernoulli dlogistic)" >&2; exit 2 ;;
  esac
  run=$runs/$name
  if [ -f "$run/config.json" ]; then
    [ -f "$run/model.safetensors" ] || vaelab train --resume "$run" --no-progress
  else
    vaelab train vae "${likelihood[@]}" --steps "$steps" --data-dir "$data_dir" --device "$device" --no-progress --out "$run"
  fi
  vaelab eval "$run" --protocol full --iw 1,10 --device "$device" > "$run/eval-full.txt"
  vaelab sample "$run" --n 100 --ncol 10 --device "$device"
  dest=$out/$name
  mkdir -p "$dest"
  cp "$run"/{config.json,metrics.jsonl,summary.json,eval-full.json,eval-full.txt,samples.png,reconstructions.png} "$dest"/
done
