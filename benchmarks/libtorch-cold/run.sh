#!/usr/bin/env bash
# Builds and runs executors.cpp against the venv's libtorch (BENCHMARKS.md
# §36). Needs scripts/setup.sh to have run and a C++ compiler (g++, which
# the workspace's build already needs for tch).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/scripts/env.sh"
model=${1:-$root/models/examples/bearing-wear/1.0.0/model.pt}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
g++ -O2 -std=c++20 "$root/benchmarks/libtorch-cold/executors.cpp" -o "$out/executors" \
  -I"$LIBTORCH/include" -I"$LIBTORCH/include/torch/csrc/api/include" \
  -L"$LIBTORCH/lib" -ltorch -ltorch_cpu -lc10 -Wl,-rpath,"$LIBTORCH/lib"
# Arguments after the model: rows a forward, features a row.
"$out/executors" "$model" "${@:2}"
