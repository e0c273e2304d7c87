#!/usr/bin/env bash
# PixelVAE and VLAE on the CPU: the protocol that fits 2 cores (experiments/pixelvae.sh stays the GPU protocol).
#
# Usage: bash experiments/pixelvae_cpu.sh DATA_DIR LANE NAMES...   (two lanes side by side, one thread each)
#        bash experiments/pixelvae_cpu.sh DATA_DIR report          (tables and figures into experiments/pixelvae/cpu)
#
# The NLL table, STEPS steps of batch 100 each (default 3000), Adam 1e-3, seed 0:
#   conv_vae        vae --net conv (z = 10): the convolutional VAE without a PixelCNN
#   pixelvae_bernoulli  the pixelvae preset with a Bernoulli decoder: the same networks and z = 32, no PixelCNN
#   pixelvae        the pixelvae preset: conv encoder and decoder (z = 32) + 3 gated PixelCNN layers (kernel 3)
#   vlae            the vlae preset: AF prior (2 MADE steps) + 2 PixelCNN layers
# evaluated with one protocol for every row: NELBO, KL, I(x; z) and active units on all 10,000 test images
# (eval-full.json), and IWAE-100 and IWAE-1000 with standard errors on a fixed subset of 1,000 of them
# (`vaelab eval --images 1000`, eval-full-1000.json: the same images for every run).
# The posterior-collapse table, SHORT steps each (default 300; collapse shows early), evaluated on the same
# 1,000-image subset (NELBO, KL, I(x; z), active units; a 12-layer PixelCNN costs 4.4x the 3-layer one):
#   narrow_elbo narrow_anneal narrow_freebits   3 PixelCNN layers (a window of about 3 rows and columns)
#   wide_elbo   wide_anneal   wide_freebits     12 layers
#   *_elbo: the plain ELBO; *_anneal: KL annealing over the first SHORT / 2 steps; *_freebits: free bits,
#   0.25 nats per latent dimension
# Sample grids (pixel by pixel) and lossy-code figures for conv_vae, pixelvae and vlae.
#
# RUNS=DIR holds the run directories (default ~/vaelab-runs/pixelvae-cpu: outside the repository, so a run a
# session could not finish resumes in the next: rerun the same command). Each finished step (training, each
# evaluation, each figure) is skipped when its file exists. Results (config, metrics, summary, eval JSON,
# figures; not weights) are copied to OUT/NAME (default experiments/pixelvae/cpu).
#
# The collapse runs continue to a longer budget from copies of their run folders: copy RUNS/{narrow,wide}_* to
# NEW_RUNS/ without their summary.json and eval-* files, then `RUNS=NEW_RUNS SHORT=N OUT=NEW_OUT bash
# experiments/pixelvae_cpu.sh DATA LANE NAMES...`: each resumes from its last checkpoint and trains to N steps (the
# annealed runs keep the warm-up they started with).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:?usage: bash experiments/pixelvae_cpu.sh DATA_DIR LANE NAMES... | DATA_DIR report}
lane=${2:?name a lane, or report}
shift 2
runs=${RUNS:-$HOME/vaelab-runs/pixelvae-cpu}
steps=${STEPS:-3000}
short=${SHORT:-300}
subset=${SUBSET:-1000}
out=${OUT:-experiments/pixelvae/cpu}
export OMP_NUM_THREADS=1
mkdir -p "$runs" "$out"

if [ "$lane" = report ]; then
  python experiments/pixelvae/cpu_table.py "$out" "$subset" > "$out/tables.md"
  cat "$out/tables.md"
  exit 0
fi

[ $# -gt 0 ] || { echo "pixelvae_cpu.sh: name the runs (conv_vae pixelvae_bernoulli pixelvae vlae narrow_elbo narrow_anneal narrow_freebits wide_elbo wide_anneal wide_freebits)" >&2; exit 2; }
for name in "$@"; do
  case $name in
    conv_vae)        model=(vae --net conv) n=$steps ;;
    pixelvae_bernoulli) model=(pixelvae --likelihood bernoulli) n=$steps ;;
    pixelvae)        model=(pixelvae) n=$steps ;;
    vlae)            model=(vlae) n=$steps ;;
    narrow_elbo)     model=(pixelvae --pixel-layers 3) n=$short ;;
    narrow_anneal)   model=(pixelvae --pixel-layers 3 --kl-warmup $((short / 2))) n=$short ;;
    narrow_freebits) model=(pixelvae --pixel-layers 3 --free-bits 0.25) n=$short ;;
    wide_elbo)       model=(pixelvae --pixel-layers 12) n=$short ;;
    wide_anneal)     model=(pixelvae --pixel-layers 12 --kl-warmup $((short / 2))) n=$short ;;
    wide_freebits)   model=(pixelvae --pixel-layers 12 --free-bits 0.25) n=$short ;;
    *) echo "pixelvae_cpu.sh: unknown run '$name'" >&2; exit 2 ;;
  esac
  run=$runs/$name
  echo "== $name: ${model[*]}, $n steps ($(date -u +%H:%M))"
  if [ ! -f "$run/summary.json" ]; then
    if [ -d "$run/checkpoints" ]; then
      vaelab train --resume "$run" --steps "$n" --threads 1 --no-progress
    else
      vaelab train "${model[@]}" --steps "$n" --batch-size 100 --seed 0 --device cpu --threads 1 --data-dir "$data_dir" \
        --out "$run" --no-progress
    fi
  fi
  case $name in
    conv_vae|pixelvae_bernoulli|pixelvae|vlae)
      [ -f "$run/eval-full.json" ] || vaelab eval "$run" --protocol full --iw 1 --device cpu > "$run/eval-full.txt"
      [ -f "$run/eval-full-$subset.json" ] || vaelab eval "$run" --images "$subset" --iw 100,1000 --device cpu > "$run/eval-full-$subset.txt"
      [ -f "$run/samples.png" ] || vaelab sample "$run" --n 100 --ncol 10 --device cpu
      [ -f "$run/lossy.png" ] || vaelab plot "$run" --kind lossy --device cpu ;;
    *)
      [ -f "$run/eval-full-$subset.json" ] || vaelab eval "$run" --images "$subset" --iw 1 --device cpu > "$run/eval-full-$subset.txt" ;;
  esac
  mkdir -p "$out/$name"
  cp "$run"/{config.json,summary.json,metrics.jsonl} "$run"/eval-*.json "$run"/eval-*.txt "$out/$name/"
  cp "$run"/{samples.png,lossy.png,reconstructions.png} "$out/$name/" 2>/dev/null || true
done
