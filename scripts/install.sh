#!/usr/bin/env bash
# One-step set-up: installs lstmkit (editable) with its test tools into the current Python.
# PyTorch: if none is installed, pin the CPU build 2.13.0 first, so that the `torch>=2.3`
# range in pyproject.toml never pulls a multi-GB CUDA build on a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
"$PYTHON" -m pip install --quiet -e ".[test]"
