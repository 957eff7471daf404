#!/usr/bin/env bash
# The accelerator suite (benchmarks/device_suite.py) as one prepared call: under 8 minutes on one
# H100 / H200, the record in benchmarks/results/ and, where the device tool sets $OUT, in $OUT.
#
#   bash benchmarks/device_suite.sh --fetch-wheels   # here, once, with network: into .whl/ the
#                                                    # pure-Python wheels the device image lacks
#   bash benchmarks/device_suite.sh [--tiny] [...]   # there (carry .whl): installs them, runs
#
# Further arguments go to `python -m benchmarks.device_suite` (--tiny, --budget-s, --batches).
# The device image has jax (CUDA), flax, optax, orbax, chex, numpy and matplotlib, but not
# evosax, gymnax, gymnasium (and what they need); the versions fetched are this checkout's
# .venv's, so both machines run the same library code.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(evosax gymnax gymnasium farama-notifications dotmap)
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] && PY=${PYTHON:-.venv/bin/python}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  pins=$("$PY" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}")
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .whl $pins
  exit 0
fi

if compgen -G ".whl/*.whl" >/dev/null; then
  site=/tmp/wm_jax_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The 1M-rollout dream needs tens of GB: let XLA take most of the card (default 75 %).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

out=${OUT:-}
log=${out:+$out/device_suite.log}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader | tee ${log:+"$log"}
# Past 450 s the suite is stopped; it has written its record after every measurement.
timeout --signal=INT --kill-after=10 450 "$PY" -m benchmarks.device_suite \
  --out-dir benchmarks/results ${out:+--copy-to "$out"} "$@" 2>&1 | tee ${log:+-a "$log"}
