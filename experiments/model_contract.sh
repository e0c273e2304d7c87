#!/usr/bin/env bash
# Issue 13 (one model contract, pluggable networks): the cs236 models re-trained at the new code with
# the reference settings (seed 0), and a convolutional VAE against the MLP VAE at the same budget
# (20,000 steps, batch 100, Adam 1e-3, z = 10) on the full test set. Results (config, metrics, eval
# JSON and text, figures; not weights) go to experiments/model_contract/<name>/.
# Usage: bash experiments/model_contract.sh [DATA_DIR] [NAMES...]
#   names: vae gmvae ssvae conv (default all); THREADS=N sets torch's CPU threads (default 0: one per core).
# Budget on 2 CPU cores: vae 3 min + 10 min full evaluation (k up to 5000); gmvae 4 min; ssvae 25 min;
# conv 25 min + 30 min full evaluation (k up to 1000: k = 5000 would take over two hours on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
names=${*:-vae gmvae ssvae conv}
threads=${THREADS:-0}
out=experiments/model_contract
mkdir -p "$out"

for name in $names; do
  run=runs/contract_$name
  rm -rf "$run"
  mkdir -p "$out/$name"
  case $name in
    vae)   model=(vae) ;;
    gmvae) model=(gmvae) ;;
    ssvae) model=(ssvae) ;;
    conv)  model=(vae --net conv) ;;
  esac
  vaelab train "${model[@]}" --seed 0 --threads "$threads" --data-dir "$data_dir" --out "$run" --no-progress | tee "$out/$name/train.txt"
  case $name in
    vae)   vaelab eval "$run" --protocol cs236 | tee "$out/$name/eval-cs236.txt"
           vaelab eval "$run" --protocol full --iw 1,10,100,1000,5000 | tee "$out/$name/eval-full.txt" ;;
    gmvae|ssvae) vaelab eval "$run" --protocol cs236 | tee "$out/$name/eval-cs236.txt" ;;
    conv)  vaelab eval "$run" --protocol cs236 | tee "$out/$name/eval-cs236.txt"
           vaelab eval "$run" --protocol full --iw 1,10,100,1000 | tee "$out/$name/eval-full.txt" ;;
  esac
  vaelab sample "$run"
  cp "$run"/{config.json,summary.json,metrics.jsonl,samples.png,reconstructions.png} "$run"/eval-*.json "$out/$name/"
done
