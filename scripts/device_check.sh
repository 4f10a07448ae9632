#!/usr/bin/env bash
# GPU readiness in one run (target: under 8 minutes on one NVIDIA GPU). Works from a bare copy
# of the repository: creates .venv if missing, installs CUDA torch, onnxruntime-gpu, tensorrt,
# onnx and onnxscript from PyPI when it can (each one that fails becomes "not installed" rows),
# runs the CUDA tests (pytest -m cuda), then prints the backends table per model at its test
# size: torch fp32, torch fp16 autocast, ONNX Runtime (TensorRT provider) fp16, TensorRT fp16
# -- first-call, forward and stereo-pair predict ms, logit difference and label agreement with
# the fp32 torch path. Rows that would start after the time budget say "skipped".
# Usage: scripts/device_check.sh [MODEL...]   (default: all four pretrained zoo models)
# Env: DEVICE_CHECK_BUDGET_S (default 470), OUT (also writes $OUT/device_check.md),
# PYTHON (an interpreter to use as it is, e.g. python3 of an image with CUDA torch, instead of
# .venv), DEVICE_CHECK_OFFLINE=1 (install nothing; set it where no package registry answers).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
budget=${DEVICE_CHECK_BUDGET_S:-470}
left() { echo $((budget - (SECONDS - start))); }
log() { echo "[device_check $((SECONDS - start))s] $*" >&2; }
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(espnetv2 hrnet_w48_ocr upernet_internimage_l upernet_internimage_xl)

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader >&2 || log 'nvidia-smi not found'

# -- environment ------------------------------------------------------------------------------
# PYTHON given: use that interpreter as it is (a GPU image's own CUDA torch; no venv, and the
# package runs from this checkout). Otherwise .venv, created when missing.
if [ -n "${PYTHON:-}" ]; then
  PY=$(command -v "$PYTHON") || { log "PYTHON=$PYTHON not found"; exit 1; }
  log "using $PY as it is"
else
  if [ ! -x .venv/bin/python ]; then
    PY=$(command -v python3.11 || command -v python3)
    log "creating .venv with $PY"
    "$PY" -m venv .venv || { log 'cannot create .venv'; exit 1; }
  fi
  PY=$PWD/.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
pip_q() { timeout "${2:-240}" "$PY" -m pip install -q --disable-pip-version-check \
  --timeout 20 --retries 1 $1 >&2; }
if [ -z "${DEVICE_CHECK_OFFLINE:-}" ] && "$PY" - <<'EOF' 2>/dev/null
import urllib.request
urllib.request.urlopen('https://pypi.org/simple/pip/', timeout=5)
EOF
then pypi=1; else pypi=0; log 'PyPI unreachable (or DEVICE_CHECK_OFFLINE): installing nothing'; fi

cuda_torch() { "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  2>/dev/null; }
if ! cuda_torch && [ $pypi = 1 ] && [ -z "${PYTHON:-}" ]; then  # never touch a given PYTHON's torch
  # PyPI's Linux torch wheels are CUDA builds; a +cpu build (download.pytorch.org) goes first.
  "$PY" -c 'import torch' 2>/dev/null && "$PY" -m pip uninstall -q -y torch >&2
  log 'installing CUDA torch from PyPI'
  pip_q torch 300 || log 'torch: install failed'
fi
cuda_torch || log 'torch has no CUDA here: the CUDA tests skip and the table says why'
if [ $pypi = 1 ]; then
  log 'installing cityseg_ros and pytest'
  pip_q '-e .' || log 'cityseg_ros: install failed'
  "$PY" -c 'import pytest' 2>/dev/null || pip_q pytest || log 'pytest: install failed'
  for pkg in onnx onnxscript tensorrt; do
    pip_q "$pkg" || log "$pkg: not installed"
  done
  # onnxruntime-gpu and the CPU onnxruntime share the module name: only the GPU one may stay.
  if ! "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in
      o.get_available_providers())' 2>/dev/null; then
    "$PY" -m pip uninstall -q -y onnxruntime >/dev/null 2>&1
    pip_q onnxruntime-gpu || log 'onnxruntime-gpu: not installed'
  fi
fi
# The pip wheels' CUDA, cuDNN and TensorRT libraries, for onnxruntime's providers.
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
for dir in "$site"/tensorrt_libs "$site"/nvidia/*/lib; do
  [ -d "$dir" ] && LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
export CITYSEG_ROS_ENGINE_CACHE=${CITYSEG_ROS_ENGINE_CACHE:-$PWD/out/device_check/engines}
"$PY" - <<'EOF' >&2
import importlib
for name in ('torch', 'onnx', 'onnxscript', 'onnxruntime', 'tensorrt'):
    try:
        module = importlib.import_module(name)
        extra = ''
        if name == 'torch':
            extra = f' cuda={module.version.cuda} available={module.cuda.is_available()}'
        if name == 'onnxruntime':
            extra = f' {module.get_available_providers()}'
        print(f'{name} {module.__version__}{extra}')
    except Exception as exc:  # noqa: B902
        print(f'{name}: not installed ({type(exc).__name__}: {exc})')
EOF

# -- CUDA tests -------------------------------------------------------------------------------
tests_s=$(( $(left) / 3 )); [ "$tests_s" -gt 240 ] && tests_s=240
log "CUDA tests (at most ${tests_s}s)"
timeout "$tests_s" "$PY" -m pytest -q -p no:cacheprovider -rs -m cuda \
  test/backends/test_backends_cuda.py >&2
log "CUDA tests: exit $?"

# -- the table --------------------------------------------------------------------------------
mkdir -p out/device_check
report=out/device_check/device_check.md
table_s=$(( $(left) - 15 ))
log "backends table (budget ${table_s}s)"
timeout $((table_s + 10)) "$PY" - "$table_s" "${models[@]}" <<'EOF' | tee "$report"
import sys
import time

from cityseg_ros.bench import backends_table
from cityseg_ros.bench.timing import environment_line, markdown_table

budget, models = float(sys.argv[1]), sys.argv[2:]
variants = [('torch', 'fp32'), ('torch', 'fp16'), ('onnxruntime', 'fp16'), ('tensorrt', 'fp16')]
deadline = time.monotonic() + budget
print(environment_line())
print()
print(markdown_table(backends_table.HEADER, []), flush=True)
notes = []
for model in models:  # rows as they come: a timeout loses only the model in progress
    table = backends_table.run(models=[model], device='cuda', runs=10, variants=variants,
                               budget_s=max(0.0, deadline - time.monotonic()))
    lines = table.splitlines()
    notes.append(lines[0])
    print('\n'.join(line for line in lines[1:] if line.startswith('| ')
                    and not line.startswith('| model |')), flush=True)
    print(f'{model} done at {budget - (deadline - time.monotonic()):.0f} s', file=sys.stderr)
print()
print('\n'.join(notes))
EOF
log "table: exit ${PIPESTATUS[0]}"
[ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] && cp "$report" "$OUT/" 2>/dev/null
log "done in $((SECONDS - start))s"
