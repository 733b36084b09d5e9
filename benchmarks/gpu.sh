#!/usr/bin/env bash
# The GPU benchmarks in one go, for a machine with a GPU and onnxruntime-gpu (CUDA and cuDNN libraries installed):
# gradients against a forward on CUDA and on TensorRT, then start-up and memory on CUDA. Results go to stdout and,
# when OUT is set (the device machine's output folder), to OUT/gpu-benchmarks.txt.
set -u
cd "$(dirname "$0")/.."
run() { echo "\$ $*"; "$@" 2>&1 | grep -v "onnxruntime:"; echo; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  for device in cuda tensorrt; do
    run timeout 300 python benchmarks/gradients.py --device "$device" --repeat 7
  done
  run timeout 400 python benchmarks/latency.py --device cuda --repeat 3
} | tee "${OUT:-/tmp}/gpu-benchmarks.txt"
