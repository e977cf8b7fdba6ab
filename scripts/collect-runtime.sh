#!/usr/bin/env bash
# Gathers what the gateway needs at run time into one folder, for a slim
# image or a copy to an edge box (the Dockerfile's runtime stage uses it):
#   OUT/bin/  the given binaries
#   OUT/lib/  every shared library they load from the Python venv's torch
#             (libtorch_cpu, libc10, libgomp and the CUDA runtime pieces
#             PyPI's build links even for CPU inference); the system's own
#             libraries (glibc, libstdc++) are left to the target system.
# Run the result with LD_LIBRARY_PATH=OUT/lib.
#
#   scripts/collect-runtime.sh OUT target/release/ironbridge target/release/ironbridge-sim
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$#" -lt 2 ]; then
  echo "usage: $0 OUT BINARY..." >&2
  exit 2
fi
out=$1
shift
# shellcheck source=env.sh
source "$root/scripts/env.sh"
venv=$(cd "$root/.venv" && pwd -P)
mkdir -p "$out/bin" "$out/lib"
for binary in "$@"; do
  cp "$binary" "$out/bin/"
  # ldd's "name => /path (address)" lines; only what lives in the venv.
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | while read -r lib; do
    real=$(readlink -f "$lib")
    case "$real" in
      "$venv"/*) cp -L "$real" "$out/lib/$(basename "$lib")" ;;
    esac
  done
done
# Check: every binary resolves all its libraries from OUT/lib and the system.
for binary in "$out"/bin/*; do
  missing=$(env -u LD_LIBRARY_PATH LD_LIBRARY_PATH="$out/lib" ldd "$binary" | awk '/not found/ {print $1}')
  if [ -n "$missing" ]; then
    echo "[collect-runtime] $binary still misses: $missing" >&2
    exit 1
  fi
done
echo "[collect-runtime] $(ls "$out/bin" | tr '\n' ' ')with $(ls "$out/lib" | wc -l) libraries ($(du -sh "$out/lib" | cut -f1)) in $out" >&2
