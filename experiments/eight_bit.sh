#!/usr/bin/env bash
# Likelihoods of 8-bit pixels beside the binarized Bernoulli: the MLP VAE (300-300, z = 10) on MNIST with the
# Bernoulli likelihood (dynamically binarized pixels) and with the discretized logistic mixture (10 components,
# the 8-bit pixels themselves), at one stated budget. Each run is evaluated on all 10,000 test images
# (`vaelab eval --protocol full --iw 1,10`): nats, and bits per dimension for the 8-bit likelihood. The two
# likelihoods model different data (binary pixels against 256 levels), so their nats are not comparable; bits/dim
# are reported for the 8-bit one only.
# rgb_folder: a folder of RGB PNG files the script writes (FOLDER_IMAGES colour dSprites drawn at random from its
# training split, so DATA_DIR must hold dsprites/ or let it be generated), given as `--dataset FOLDER` like any user's
# images: a conv VAE (Locatello et al.'s 32-32-64-64 convolutions, a 256-unit layer, z = 10) with the discretized
# logistic mixture (5 components), batch 64, evaluated on the folder's held-out 10 %.
# color_dsprites: the same conv VAE and likelihood on the built-in colour dSprites (rendered into DATA_DIR on first
# use, 737,280 images of 64 x 64 x 3), evaluated on a fixed 1,000-image subset of its test split (`--images 1000`).
# Results (config, metrics, eval JSON, sample grids; not weights) go to experiments/eight_bit/<name>/.
# Usage: bash experiments/eight_bit.sh [DATA_DIR] [NAMES...]; names: bernoulli dlogistic rgb_folder color_dsprites (default
# the first two); STEPS=N (default 5000; rgb_folder and color_dsprites: RGB_STEPS, default 1500), FOLDER_IMAGES=N (default 6000), RUNS=DIR (run
# directories and the written folder, default ~/vaelab-runs/eight_bit), DEVICE=cpu|cuda (default auto).
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
    rgb_folder)
      folder=$runs/rgb-folder
      if [ ! -f "$folder/.complete" ]; then
        python - "$data_dir" "$folder" "${FOLDER_IMAGES:-6000}" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vaelab import data

data_dir, folder, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
train = data.load("color-dsprites", "train", data_dir)
index = np.sort(np.random.default_rng(0).choice(len(train), n, replace=False))
images = train.uint8(index).numpy()  # (n, 3, 64, 64)
folder.mkdir(parents=True, exist_ok=True)
for i, image in enumerate(images):
    Image.fromarray(image.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
(folder / ".complete").write_text(f"{n}\n")
PY
      fi
      likelihood=(--dataset "$folder" --net conv --set model.channels=32,32,64,64 --set model.hidden=256
                  --likelihood dlogistic --mixtures 5 --batch-size 64) ;;
    color_dsprites)
      likelihood=(--dataset color-dsprites --net conv --set model.channels=32,32,64,64 --set model.hidden=256
                  --likelihood dlogistic --mixtures 5 --batch-size 64) ;;
    *) echo "eight_bit.sh: unknown name '$name' (bernoulli dlogistic rgb_folder color_dsprites)" >&2; exit 2 ;;
  esac
  run=$runs/$name
  if [ -f "$run/config.json" ]; then
    [ -f "$run/model.safetensors" ] || vaelab train --resume "$run" --no-progress
  else
    run_steps=$steps
    case $name in rgb_folder|color_dsprites) run_steps=${RGB_STEPS:-1500} ;; esac
    vaelab train vae "${likelihood[@]}" --steps "$run_steps" --data-dir "$data_dir" --device "$device" --no-progress --out "$run"
  fi
  evaluation=full subset=()
  [ "$name" = color_dsprites ] && evaluation=full-1000 subset=(--images 1000)
  vaelab eval "$run" --protocol full "${subset[@]}" --iw 1,10 --device "$device" > "$run/eval-$evaluation.txt"
  vaelab sample "$run" --n 100 --ncol 10 --device "$device"
  dest=$out/$name
  mkdir -p "$dest"
  cp "$run"/{config.json,metrics.jsonl,summary.json,eval-$evaluation.json,eval-$evaluation.txt,samples.png,reconstructions.png} "$dest"/
done
