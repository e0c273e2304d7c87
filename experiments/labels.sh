#!/usr/bin/env bash
# Issue 4's experiments: SSVAE (M2) semi-supervised (gen_weight 1) and classifier-only (gen_weight 0)
# with the reference settings (30,000 steps, 100 labels at the cs236 positions, class_weight 100, seed 0),
# and the conditional VAE (Gaussian decoder, variance 0.1) on MNIST and Fashion-MNIST with its
# style/content grid. Results go to experiments/labels/<name>/.
# Usage: bash experiments/labels.sh [DATA_DIR] [NAMES...]   (names: ssvae ssvae_gen0 cvae_mnist cvae_fashion)
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-cvae_mnist cvae_fashion ssvae_gen0 ssvae}
out=experiments/labels
mkdir -p "$out"

for name in $names; do
  run=runs/$name
  rm -rf "$run"
  case $name in
    ssvae)        vaelab train ssvae --seed 0 --data-dir "$data_dir" --out "$run" --no-progress ;;
    ssvae_gen0)   vaelab train ssvae --gen-weight 0 --seed 0 --data-dir "$data_dir" --out "$run" --no-progress ;;
    cvae_mnist)   vaelab train cvae --dataset mnist --seed 0 --data-dir "$data_dir" --out "$run" --no-progress ;;
    cvae_fashion) vaelab train cvae --dataset fashion-mnist --seed 0 --data-dir "$data_dir" --out "$run" --no-progress ;;
  esac | tee "$run.train.txt"
  mkdir -p "$out/$name"
  vaelab eval "$run" --protocol full --iw 1,10,100 | tee "$out/$name/eval-full.txt"
  vaelab sample "$run" --n 200
  cp "$run"/{config.json,summary.json,metrics.jsonl,eval-full.json,samples.png,reconstructions.png} "$out/$name/"
done
