#!/usr/bin/env bash
# The reproducibility table: `vaelab reproduce literature` (the IWAE, VampPrior and Ladder VAE papers' models at
# their protocols, tested with IWAE-5000 on all 10,000 test images), at a budget of EPOCHS epochs per run.
#
# Usage: bash experiments/literature.sh DATA_DIR LANE NAMES...
#   LANE     a name for this process's output folder, RUNS/lane-LANE (vaelab reproduce takes one OUT per process:
#            run two lanes side by side, one thread each, on a 2-core machine)
#   NAMES    experiments of the suite (iwae_vae iwae_k5 iwae_k50 vamp_vae vamp_vampprior vamp_hvae
#            vamp_hvae_vampprior ladder), run one after the other
#   EPOCHS=N the cap (default 100); the same command with a larger N continues every capped run
#   RUNS=DIR where run directories live (default ~/vaelab-runs/literature: outside the repository, so that a run a
#            session could not finish resumes in the next)
# `bash experiments/literature.sh DATA_DIR report` gathers every lane's runs into RUNS/all (copies, weights
# included, so `vaelab eval` still works there), writes the combined report with `vaelab reproduce literature
# --report-only` (runs as far as they got: a run still training shows its validation curve and no test bound), and
# copies the report, its figures and each run's config, metrics, summary and evaluation (not weights) into
# experiments/literature/.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:?usage: bash experiments/literature.sh DATA_DIR LANE NAMES... | DATA_DIR report}
lane=${2:?name a lane, or report}
shift 2
runs=${RUNS:-$HOME/vaelab-runs/literature}
epochs=${EPOCHS:-100}
export OMP_NUM_THREADS=1
mkdir -p "$runs"

if [ "$lane" = report ]; then
  all=$runs/all
  mkdir -p "$all/runs"
  for run in "$runs"/lane-*/runs/*; do
    [ -d "$run" ] || continue
    name=$(basename "$run")
    rm -rf "${all:?}/runs/$name"
    cp -a "$run" "$all/runs/$name"
  done
  vaelab reproduce literature --report-only --out "$all"
  out=experiments/literature
  mkdir -p "$out/figures"
  cp "$all/report.md" "$all/report.html" "$out/"
  cp "$all"/figures/*.png "$out/figures/"
  for run in "$all"/runs/*; do
    mkdir -p "$out/runs/$(basename "$run")"
    cp "$run"/{config.json,metrics.jsonl,summary.json,history.jsonl,eval-full.json,samples.png,curves.png} "$out/runs/$(basename "$run")/" 2>/dev/null || true
  done
  exit 0
fi

names=$(echo "$@" | tr ' ' ',')
[ -n "$names" ] || { echo "literature.sh: name the experiments to run" >&2; exit 2; }
vaelab reproduce literature --epochs "$epochs" --only "$names" --data-dir "$data_dir" --threads 1 --no-progress \
  --out "$runs/lane-$lane"
