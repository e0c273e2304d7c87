#!/usr/bin/env bash
# The default VAE (docs/reference.md section 1: 20,000 steps, batch 100, lr 1e-3, z = 10, seed 0),
# evaluated with both protocols. Results (JSON, PNG, training log) are copied next to this script
# into experiments/vae_baseline/; the run directory itself stays under runs/ (not committed).
# Usage: bash experiments/vae_baseline.sh [DATA_DIR]     (about 4 min training + 15 min full eval on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
run=runs/vae_baseline
out=experiments/vae_baseline
rm -rf "$run"
mkdir -p "$out"
vaelab train vae --seed 0 --data-dir "$data_dir" --out "$run" --no-progress | tee "$out/train.txt"
vaelab eval "$run" --protocol cs236 | tee "$out/eval-cs236.txt"
vaelab eval "$run" --protocol full --iw 1,10,100,1000,5000 | tee "$out/eval-full.txt"
vaelab sample "$run"
cp "$run"/{config.json,summary.json,metrics.jsonl,eval-cs236.json,eval-full.json,samples.png,reconstructions.png} "$out/"
