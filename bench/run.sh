#!/usr/bin/env bash
# The speed benchmark (issue 6): vaelab vs a plain PyTorch loop vs pythae 0.1.2, and IWAE-1000
# throughput against the decoder's FLOP bound, all in one process on this machine.
# Usage: bash bench/run.sh [DATA_DIR] [bench.py options...]   (see `bench/.venv/bin/python bench/bench.py --help`)
# pythae lives only in bench/.venv: `pip install --no-deps pythae==0.1.2` plus the few packages it
# imports, so that its requirements cannot replace torch 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-${VAELAB_DATA:-../shared/data}}
shift || true
venv=bench/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pythae, vaelab" 2>/dev/null; then
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "torch==2.13.0"
  "$venv/bin/pip" install -q -e .
  "$venv/bin/pip" install -q --no-deps "pythae==0.1.2"
  # pythae's own imports (its metadata also pins scikit-learn, imageio and dataclasses, which its
  # trainer and VAE never import).
  "$venv/bin/pip" install -q "pydantic>=2" "cloudpickle>=2.1" typing-extensions
fi
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
exec "$venv/bin/python" bench/bench.py --data-dir "$data_dir" "$@"
