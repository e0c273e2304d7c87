#!/usr/bin/env bash
# The GPU protocol for PixelCNN decoders (experiments/pixelvae_cpu.sh is the one that fits 2 CPU cores): PixelVAE
# and VLAE against the convolutional VAE of experiments/model_contract, and posterior collapse / decoder weakening for
# a PixelCNN decoder, at one budget: 20,000 steps of batch 100, Adam 1e-3, seed 0 (the conv VAE's budget). Full test set (10,000 images, dynamic binarization), IWAE k = 1000 with
# standard errors, KL, mutual information I(x; z), active units (`vaelab eval --protocol full`).
#   conv_vae      vae --net conv (z = 10), the convolutional VAE of experiments/model_contract
#   pixelvae      the pixelvae preset: the same conv encoder/decoder (z = 32) + 3 gated PixelCNN layers (kernel 3)
#   vlae          the vlae preset: AF prior (2 MADE steps) + 2 PixelCNN layers
#   deep_elbo     PixelVAE with a 12-layer PixelCNN (a window of about 12 rows and columns), plain ELBO
#   deep_warmup   the same with KL annealing over the first 10,000 steps
#   deep_freebits the same with free bits, 0.25 nats per latent dimension
#   (the restricted receptive field is the pixelvae row: 3 layers)
# Figures: samples (pixel by pixel) and `vaelab plot --kind lossy` (reconstructions redrawn from one code).
# Results (config, metrics, eval JSON and text, figures; not weights) go to experiments/pixelvae/<name>/.
# Usage: bash experiments/pixelvae.sh [DATA_DIR] [NAMES...]; STEPS=N (default 20000), DEVICE=cpu|cuda (default auto),
# IW=1,1000 (default). Meant for a GPU: on one CPU thread a PixelVAE step takes about 0.6 s and the IWAE-1000
# evaluation of the 10,000 test images about 4 hours (about 700 importance samples/s).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-conv_vae pixelvae vlae deep_elbo deep_warmup deep_freebits}
steps=${STEPS:-20000}
device=${DEVICE:-auto}
iw=${IW:-1,1000}
out=experiments/pixelvae
mkdir -p "$out"

for name in $names; do
  case $name in
    conv_vae)      model=(vae --net conv) ;;
    pixelvae)      model=(pixelvae) ;;
    vlae)          model=(vlae) ;;
    deep_elbo)     model=(pixelvae --pixel-layers 12) ;;
    deep_warmup)   model=(pixelvae --pixel-layers 12 --kl-warmup 10000) ;;
    deep_freebits) model=(pixelvae --pixel-layers 12 --free-bits 0.25) ;;
    *) echo "pixelvae.sh: unknown name '$name' (conv_vae pixelvae vlae deep_elbo deep_warmup deep_freebits)" >&2; exit 2 ;;
  esac
  run=runs/pixelvae_$name
  rm -rf "$run"
  mkdir -p "$out/$name"
  vaelab train "${model[@]}" --steps "$steps" --seed 0 --device "$device" --data-dir "$data_dir" --out "$run" --no-progress | tee "$out/$name/train.txt"
  vaelab eval "$run" --protocol full --iw "$iw" --device "$device" | tee "$out/$name/eval-full.txt"
  vaelab sample "$run" --n 100 --ncol 10 --device "$device"
  vaelab plot "$run" --kind lossy --device "$device"
  vaelab plot "$run" --kind kl --device "$device"
  cp "$run"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png,lossy.png,kl.png} "$run"/eval-*.json "$out/$name/"
done
