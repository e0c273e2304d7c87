#!/usr/bin/env bash
# The GPU check: one command for a machine with a CUDA GPU, under 8 minutes on an H100. In order, each stage
# under its own time limit, every log and result under $OUT:
#   1. the CUDA tests (tests/test_cuda_graphs.py, tests/test_device_step.py)   -> cuda-tests.log
#   2. bench/gpu.py: vaelab eager and with the captured step (train.cuda_graphs) at batch 100 and 1,000 beside
#      the plain loop, in one process; the full-protocol evaluation at fp32, tf32 and bf16  -> gpu.json, gpu.log
#   3. the whole test suite, python -m pytest -q -x, in the time left              -> suite.log
# and summary.json (each stage's exit status, seconds and limit) and env.txt (GPU, Python, torch).
# The benchmark runs before the whole suite so that a slow suite cannot cost the GPU figures; gpu.py writes
# its JSON after every measurement, so a stage stopped by its limit keeps what it measured.
#
# Here, once, before the device call: MNIST gzipped (11 MB; 55 MB raw would not fit the 64 MiB a call carries)
# into .gpu-data/, a folder .git/info/exclude keeps out of git:
#   bash bench/gpu_check.sh --prepare [DATA_DIR]      (DATA_DIR holds mnist/; default $VAELAB_DATA, else ../shared/data)
# then run it there with carry [".gpu-data"] and timeout_s 540:   bash bench/gpu_check.sh
#
# There no package registry can be reached, and a virtual environment made here would not run (torch here is a
# CPU build): it uses the machine's own Python with a CUDA build of torch ($GPU_CHECK_PYTHON, python3, or
# /opt/torch/.venv/bin/python3) and vaelab from src/ by PYTHONPATH (nothing to build or install). Wheels carried in
# .whl/ (see the device README) are unpacked to /tmp first, for a package that Python lacks. A missing package
# stops it with its name. The MNIST it benchmarks on: $VAELAB_DATA, shared/data or .gpu-data (each holding mnist/).
#
# A rehearsal on a machine without CUDA (the stages, logs and summary; not the GPU's figures):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_PYTHON=.venv/bin/python GPU_CHECK_SUITE=tests/test_config.py bash bench/gpu_check.sh
# runs the CUDA tests (skipped there), bench/gpu.py with a few steps on the CPU, and the named tests as "the suite".
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  set -e
  source_dir=${2:-${VAELAB_DATA:-../shared/data}}
  mkdir -p .gpu-data/mnist
  for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "$source_dir/mnist/$name.gz" ]; then
      cp "$source_dir/mnist/$name.gz" .gpu-data/mnist/
    else
      gzip -n -9 -c "$source_dir/mnist/$name" > ".gpu-data/mnist/$name.gz"
    fi
  done
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.gpu-data/' "$exclude" 2>/dev/null || echo '/.gpu-data/' >> "$exclude"
  du -sh .gpu-data
  echo "now: run(command=\"bash bench/gpu_check.sh\", carry=[\".gpu-data\"], timeout_s=540)"
  exit 0
fi

OUT=${OUT:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$OUT"
budget=${GPU_CHECK_SECONDS:-465}  # the whole check; the device call's own limit is 600 s
device=${GPU_CHECK_DEVICE:-cuda}
cuda_tests=(tests/test_cuda_graphs.py tests/test_device_step.py) threads=(4 2)  # per stage: the CUDA tests, the suite
[ "$device" = cpu ] && cuda_tests=(tests/test_cuda_graphs.py) threads=(1 1)
started=$SECONDS
declare -A rc seconds limits

left() { echo $(( budget - (SECONDS - started) )); }

# stage NAME LIMIT LOG COMMAND...: the command under `timeout` (SIGINT first, so pytest prints its summary), its
# output teed into $OUT/LOG.
stage() {
  local name=$1 limit=$2 log=$3
  shift 3
  local begun=$SECONDS
  echo "== $name (limit ${limit} s): $*" | tee "$OUT/$log"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  rc[$name]=${PIPESTATUS[0]}
  seconds[$name]=$(( SECONDS - begun ))
  limits[$name]=$limit
  echo "== $name: exit ${rc[$name]} after ${seconds[$name]} s" | tee -a "$OUT/$log"
}

summary() {
  {
    echo "{"
    echo "  \"python\": \"${py:-none}\", \"data\": \"${data:-none}\", \"seconds\": $(( SECONDS - started )),"
    echo "  \"stages\": {"
    local first=1
    for name in cuda_tests gpu_bench suite; do
      [ -n "${rc[$name]+set}" ] || continue
      [ $first = 1 ] || echo ","
      first=0
      printf '    "%s": {"exit": %s, "seconds": %s, "limit": %s, "timed_out": %s}' "$name" "${rc[$name]}" "${seconds[$name]}" \
        "${limits[$name]}" "$([ "${rc[$name]}" = 124 ] || [ "${rc[$name]}" = 137 ] && echo true || echo false)"
    done
    echo ""
    echo "  },"
    echo "  \"notes\": \"$*\""
    echo "}"
  } > "$OUT/summary.json"
  cat "$OUT/summary.json"
}

# Carried wheels, if any, for a package the machine's Python lacks.
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl \
    && export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

py=""
for candidate in "${GPU_CHECK_PYTHON:-}" python3 /opt/torch/.venv/bin/python3 python; do
  [ -n "$candidate" ] && command -v "$candidate" > /dev/null 2>&1 || continue
  if "$candidate" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() or '$device' == 'cpu' else 1)" 2> /dev/null; then
    py=$(command -v "$candidate")
    break
  fi
done
{
  if command -v nvidia-smi > /dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
  echo "python: ${py:-none with a CUDA build of torch}"
  [ -n "$py" ] && "$py" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
                                torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')"
} 2>&1 | tee "$OUT/env.txt"
if [ -z "$py" ]; then
  summary "no Python with a CUDA build of torch: set GPU_CHECK_PYTHON, or carry torch's CUDA wheel in .whl/"
  exit 2
fi
missing=$("$py" - <<'EOF'
import importlib.util
names = ["numpy", "safetensors", "tqdm", "matplotlib", "PIL", "scipy", "sklearn", "tensorboard", "markdown", "pytest", "hypothesis"]
print(" ".join(n for n in names if importlib.util.find_spec(n) is None))
EOF
)
if [ -n "$missing" ]; then
  summary "missing Python packages: $missing (carry their wheels in .whl/)"
  exit 3
fi
"$py" -c "import vaelab" || { summary "vaelab does not import from src/"; exit 3; }

data=""
for candidate in "${VAELAB_DATA:-}" shared/data .gpu-data; do
  if [ -n "$candidate" ] && compgen -G "$candidate/mnist/train-images-idx3-ubyte*" > /dev/null; then
    data=$candidate
    break
  fi
done

# 1. The CUDA tests, every failure shown (no -x).
stage cuda_tests 150 cuda-tests.log env OMP_NUM_THREADS="${threads[0]}" "$py" -m pytest -q -rs -p no:cacheprovider \
  --basetemp=/tmp/pt-gpu-cuda "${cuda_tests[@]}"

# 2. The benchmark (10,000 steps at batch 100 and 2,000 at 1,000: a few seconds per trainer on an H100).
limit=$(( $(left) - 90 ))  # the suite gets the rest, at least 80 s
[ $limit -gt 220 ] && limit=220
if [ -n "$data" ] && [ $limit -ge 60 ]; then
  sizes=(--steps-100 10000 --steps-1000 2000)
  [ "$device" = cpu ] && sizes=(--steps-100 12 --steps-1000 3 --large-batch 200 --iw 1,5 --eval-images 40)
  stage gpu_bench $limit gpu.log "$py" bench/gpu.py --data-dir "$data" --device "$device" "${sizes[@]}" --out "$OUT/gpu.json"
elif [ -n "$data" ]; then
  echo "bench/gpu.py skipped: ${limit} s left for it" | tee "$OUT/gpu.log"
else
  echo "no MNIST under \$VAELAB_DATA, shared/data or .gpu-data: bench/gpu.py skipped (bash bench/gpu_check.sh --prepare, here)" \
    | tee "$OUT/gpu.log"
fi

# 3. The whole suite in the time left, spread over the cores when pytest-xdist is there (the real-MNIST tests
# skip: they check the published files' checksums, which the gzipped copy does not have).
limit=$(( $(left) - 10 ))
if [ $limit -ge 60 ]; then
  workers=()
  if "$py" -c "import xdist" 2> /dev/null; then
    n=$(( $(nproc) / 2 ))
    [ $n -gt 8 ] && n=8
    [ $n -ge 2 ] && workers=(-n "$n" --dist loadfile)
  fi
  # shellcheck disable=SC2086 (GPU_CHECK_SUITE: test paths, split on spaces)
  stage suite $limit suite.log env -u VAELAB_DATA OMP_NUM_THREADS="${threads[1]}" "$py" -m pytest -q -x -p no:cacheprovider \
    --basetemp=/tmp/pt-gpu-suite ${workers[@]+"${workers[@]}"} ${GPU_CHECK_SUITE:-}
else
  echo "whole suite skipped: ${limit} s left" | tee "$OUT/suite.log"
fi

summary "stages in order: cuda_tests, gpu_bench, suite; exit 124 or 137 is a stage stopped at its limit"
