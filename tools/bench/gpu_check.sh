#!/usr/bin/env bash
# Issue 15's GPU check in one command, from the repository root of a machine with an NVIDIA GPU:
#   bash tools/bench/gpu_check.sh [--json gpu_check.json] [--quick]
# Installs the package with the CUDA libraries (pip install -e ".[cuda,test]") unless ONNX
# Runtime already offers the CUDA provider, then runs tools/bench/gpu_check.py --device cuda
# (extra arguments are passed on). Exit status 1 when a check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" 2>/dev/null; then
    "$PYTHON" -m pip install -q -e ".[cuda,test]"
fi
exec env PYTHONUNBUFFERED=1 "$PYTHON" tools/bench/gpu_check.py --device cuda "$@"
