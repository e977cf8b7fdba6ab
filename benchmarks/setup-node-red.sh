#!/usr/bin/env bash
# The Node-RED contestant of the performance benchmark (benchmarks/node-red/):
# node and npm (Debian's nodejs and npm, unless a node is installed), and
# Node-RED with its modbus and influxdb nodes exactly as
# benchmarks/node-red/package-lock.json pins them (`npm ci`, from the npm
# registry). Idempotent: a second run checks and returns. Only the
# benchmark needs it (scripts/bench_reference.py runs it when asked for the
# contestant node-red); the demo and the tests do not.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '[setup-node-red] %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

dir="$root/benchmarks/node-red"
stamp="$dir/node_modules/.ironbridge-lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "installing Node-RED and its nodes into benchmarks/node-red/node_modules"
  # --ignore-scripts: the serial port's native module (for Modbus RTU, not
  # used here) ships prebuilt; nothing else has an install step.
  npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
  printf '%s' "$want" > "$stamp"
fi
