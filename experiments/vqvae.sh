#!/usr/bin/env bash
# Issue 20 (VQ-VAE with a learned prior): stage one (vqvae preset: conv encoder to a 7 x 7 grid of 16-d vectors,
# 128 codes, codebook + commitment losses, beta = 0.25) with and without code restarts, then stage two (a PixelCNN
# prior over the frozen codes) from the run with restarts, on MNIST and Fashion-MNIST (Bernoulli likelihood on
# dynamically binarized pixels, as every bound in this project). Each stage is evaluated on the full test set
# (10,000 images binarized once; the posterior is a point mass, so the bound is computed once per image):
#   stage one:  log p(x) >= log p(x | e_k) - 49 log 128   (uniform codes)
#   stage two:  log p(x) >= log p(x | e_k) + log p_psi(k)  (learned prior)
# Results (config, metrics, eval JSON and text, samples, reconstructions; not weights) go to experiments/vqvae/<name>/.
# Usage: bash experiments/vqvae.sh [DATA_DIR] [NAMES...]
#   names: mnist fashion mnist_norestart fashion_norestart (default all); STEPS=N for stage one (default 3000: 5 epochs),
#   PRIOR_STEPS=N for stage two (default 3000); batch 100, Adam 1e-3, seed 0.
# Each name runs on one CPU thread (OMP_NUM_THREADS=1), so two names can run side by side on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-mnist fashion mnist_norestart fashion_norestart}
steps=${STEPS:-3000}
prior_steps=${PRIOR_STEPS:-3000}
out=experiments/vqvae
mkdir -p "$out"
export OMP_NUM_THREADS=1

keep() {  # keep() RUN DEST: what a run directory holds besides weights and checkpoints
  mkdir -p "$2"
  cp "$1"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png} "$1"/eval-*.json "$2/"
}

for name in $names; do
  case $name in
    mnist)             dataset=mnist;         restart=(); prior=1 ;;
    fashion)           dataset=fashion-mnist; restart=(); prior=1 ;;
    mnist_norestart)   dataset=mnist;         restart=(--set model.restart_threshold=0); prior=0 ;;
    fashion_norestart) dataset=fashion-mnist; restart=(--set model.restart_threshold=0); prior=0 ;;
    *) echo "vqvae.sh: unknown name '$name' (mnist fashion mnist_norestart fashion_norestart)" >&2; exit 2 ;;
  esac
  run=runs/vqvae_$name
  rm -rf "$run" "$run-prior"
  mkdir -p "$out/$name"
  vaelab train vqvae --dataset "$dataset" "${restart[@]}" --steps "$steps" --seed 0 --data-dir "$data_dir" --out "$run" --no-progress \
    | tee "$out/$name/train.txt"
  vaelab eval "$run" --protocol full | tee "$out/$name/eval-full.txt"
  vaelab sample "$run" --n 100 --ncol 10  # stage one's prior: uniform codes
  keep "$run" "$out/$name"
  if [ "$prior" = 1 ]; then
    mkdir -p "$out/$name/prior"
    vaelab train vqvae-prior --from "$run" --steps "$prior_steps" --seed 0 --out "$run-prior" --no-progress | tee "$out/$name/prior/train.txt"
    vaelab eval "$run-prior" --protocol full | tee "$out/$name/prior/eval-full.txt"
    vaelab sample "$run-prior" --n 100 --ncol 10  # codes drawn from the learned prior
    keep "$run-prior" "$out/$name/prior"
  fi
done
