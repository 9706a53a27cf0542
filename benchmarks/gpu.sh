#!/usr/bin/env bash
# The GPU report in one command (see benchmarks/gpu.py):
#   bash benchmarks/gpu.sh [--device cuda|cpu] [--quick] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu.py "$@"
