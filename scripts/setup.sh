#!/usr/bin/env bash
# Installs everything IronBridge's demo and tests need on a fresh Debian 12
# machine that has only the Rust toolchain and python3. Idempotent: a second
# run checks and returns quickly.
#
#   - Debian packages: victoria-metrics (an InfluxDB-v2-write-API store used by
#     the demo and the tests), influxdb (a real InfluxDB 1.x for the tests of
#     `api = "v1"`), prometheus (scrapes the gateway's /metrics in the
#     tests), socat (pseudo-terminal pairs: the serial line
#     of the Modbus RTU tests), and python3-venv where python3 lacks ensurepip
#   - .venv/: a Python virtual environment with torch (pinned to the libtorch
#     version `tch` links against), asyncua and pymodbus (independent protocol
#     peers for the tests; pyserial lets pymodbus serve a serial line), numpy
#
# `setup.sh --build-only` installs only what building the gateway needs (the
# venv with torch, whose libtorch `tch` links): the Dockerfile's builder
# stage runs it, so the image and this machine take libtorch from one place.
set -euo pipefail
build_only=false
case "${1:-}" in
  --build-only) build_only=true ;;
  "") ;;
  *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# torch must match tch 0.26 exactly (libtorch 2.13.0); see FACTS in the docs.
TORCH_VERSION=2.13.0
PY_REQUIREMENTS=(
  "torch==${TORCH_VERSION}"
  "numpy==2.3.5"
  "asyncua==2.1.0"
  "pymodbus==3.11.4"
  "pyserial==3.5"
  # The fleet's registry and serving engine (issue 11): a real MLflow
  # tracking/registry server and MLServer with its MLflow runtime, started by
  # the tests. They resolve beside the pins above without moving any of them.
  "mlflow==3.17.2"
  "mlserver==1.7.1"
  "mlserver-mlflow==1.7.1"
)
if $build_only; then
  PY_REQUIREMENTS=("torch==${TORCH_VERSION}")
fi

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

debian_packages=(victoria-metrics influxdb prometheus socat)
if $build_only; then
  debian_packages=()
fi
# Debian's own python3 makes venvs only with python3-venv (ensurepip).
if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  debian_packages+=(python3-venv)
fi
missing=()
for p in ${debian_packages[@]+"${debian_packages[@]}"}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  # The package ships a systemd unit; we never rely on it (tests and the demo
  # start their own instance on a free loopback port).
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package may start a system instance on :8428; the demo and tests
# use their own ports, so it is harmless, but say so once.
$build_only || command -v victoria-metrics >/dev/null || { log "victoria-metrics not on PATH after install"; exit 1; }
$build_only || command -v influxd >/dev/null || { log "influxd not on PATH after install"; exit 1; }
$build_only || command -v prometheus >/dev/null || { log "prometheus not on PATH after install"; exit 1; }
$build_only || command -v socat >/dev/null || { log "socat not on PATH after install"; exit 1; }

venv="$root/.venv"
stamp="$venv/.ironbridge-requirements"
want=$(printf '%s\n' "${PY_REQUIREMENTS[@]}")
if [ ! -x "$venv/bin/python" ]; then
  log "creating Python venv in .venv"
  python3 -m venv "$venv"
fi
up_to_date=false
[ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && up_to_date=true
# A full install holds the build's torch too.
$build_only && [ -f "$stamp" ] && grep -qx "torch==${TORCH_VERSION}" "$stamp" && up_to_date=true
if ! $up_to_date; then
  # PyPI's Linux torch wheel brings its CUDA libraries: the venv takes about
  # 5 GiB. Say so before pip fails half-way with ENOSPC.
  need_kib=$((6 * 1024 * 1024))
  free_kib=$(df --output=avail -k "$root" | tail -n 1 | tr -d ' ')
  if [ "$free_kib" -lt "$need_kib" ]; then
    log "the Python venv needs about 6 GiB free on $(df --output=target "$root" | tail -n 1); $((free_kib / 1024)) MiB are free"
    exit 1
  fi
  log "installing Python packages (torch is a large download): ${PY_REQUIREMENTS[*]}"
  # --no-cache-dir: a second copy of the wheels in ~/.cache would double the
  # space the install needs and is never used again by a one-shot setup.
  "$venv/bin/python" -m pip install -q --no-cache-dir --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
  printf '%s' "$want" > "$stamp"
fi
log "ready"
