#!/usr/bin/env bash
# Issue 21 (disentanglement measured): the VAE (beta = 1) and beta-VAEs (beta = 4, 16) with MLPs 300-300, and a
# beta-VAE (beta = 4) with the convolutional networks of Locatello et al. (four 4x4 stride-2 convolutions of 32, 32,
# 64, 64 channels, a 256-unit layer; the decoder mirrors it), z = 10, on the generated dSprites (--dataset dsprites;
# the first use renders and caches its 737,280 images, about 2.5 minutes on 2 CPU cores), for several seeds, as
# docs/reference.md section 3 asks (ranges over seeds, not one run). Each run: the bounds on the test split (`vaelab
# eval --protocol full --iw 1`: reconstruction, KL) and the four metrics (`vaelab eval --disentanglement`), plus a
# traversal whose rows name the factor each latent carries.
# Results (config, metrics, eval JSON, figures; not weights) go to experiments/disentanglement/<name>-seed<S>/.
# Usage: bash experiments/disentanglement.sh [DATA_DIR] [NAMES...]; names: vae beta4 beta16 conv_beta4 (default all);
# SEEDS="0 1 2" (the seeds to run, default those three), STEPS=N (default 15000, the measured budget; batch 64 as Higgins et al.),
# DEVICE=cpu|cuda (default auto). EXTEND=N trains the existing runs/dsprites_<name>-seed<S> on to N steps instead
# (`vaelab train --resume RUN --steps N`: the same runs at a longer budget) and writes to
# experiments/disentanglement/steps<N>/<name>-seed<S>/.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-vae beta4 beta16 conv_beta4}
seeds=${SEEDS:-0 1 2}
steps=${STEPS:-15000}
device=${DEVICE:-auto}
extend=${EXTEND:-}
out=experiments/disentanglement
mkdir -p "$out"

for name in $names; do
  case $name in
    vae)        model=(vae --beta 1) ;;
    beta4)      model=(vae --beta 4) ;;
    beta16)     model=(vae --beta 16) ;;
    conv_beta4) model=(vae --beta 4 --net conv --set model.channels=32,32,64,64 --set model.hidden=256) ;;
    *) echo "disentanglement.sh: unknown name '$name' (vae beta4 beta16 conv_beta4)" >&2; exit 2 ;;
  esac
  for seed in $seeds; do
    run=runs/dsprites_$name-seed$seed
    if [ -n "$extend" ]; then
      [ -f "$run/config.json" ] || { echo "disentanglement.sh: EXTEND=$extend needs the earlier run $run" >&2; exit 2; }
      dest=$out/steps$extend/$name-seed$seed
      mkdir -p "$dest"
      vaelab train --resume "$run" --steps "$extend" --device "$device" --no-progress | tee "$dest/train.txt"
    else
      dest=$out/$name-seed$seed
      rm -rf "$run"
      mkdir -p "$dest"
      vaelab train "${model[@]}" --dataset dsprites --z-dim 10 --batch-size 64 --steps "$steps" --seed "$seed" --device "$device" \
        --data-dir "$data_dir" --out "$run" --no-progress | tee "$dest/train.txt"
    fi
    vaelab eval "$run" --protocol full --iw 1 --device "$device" | tee "$dest/eval-full.txt"
    vaelab eval "$run" --disentanglement --seed "$seed" --device "$device" | tee "$dest/eval-disentanglement.txt"
    vaelab plot "$run" --kind traversal --device "$device"
    vaelab sample "$run" --n 64 --ncol 8 --device "$device"
    cp "$run"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png,traversal.png} "$run"/eval-*.json "$dest/"
  done
done
