#!/usr/bin/env bash
# The IronBridge demo, from a fresh clone: installs what it needs
# (scripts/setup.sh, idempotent), builds, then starts on this machine
#   - victoria-metrics (InfluxDB v2 write API) on 127.0.0.1:8428,
#   - the simulated pump (Modbus TCP) on 127.0.0.1:5020,
#   - the simulated spindle (OPC UA, SignAndEncrypt with a user) on
#     127.0.0.1:4841,
#   - the gateway with config/example.toml and the example models,
# and prints where to look. Ctrl-C stops everything.
#
# IRONBRIDGE_DEMO_SECONDS=N stops the demo by itself after N seconds.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

VM_PORT=8428
SIM_PORT=5020
SPINDLE_PORT=4841
OPCUA_PORT=4840
data="$root/demo-data"

log() { printf '[demo] %s\n' "$*" >&2; }

# 9184: [http] in config/example.toml (health and metrics).
for port in $VM_PORT $SIM_PORT $SPINDLE_PORT $OPCUA_PORT 9184; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port on 127.0.0.1 is already in use; stop what uses it (maybe an earlier demo) and retry"
    exit 1
  fi
done

bash scripts/setup.sh
source scripts/env.sh
log "building (release; the first build takes a few minutes)"
cargo build --release --locked -p ironbridge -p ironbridge-simulator

mkdir -p "$data/victoria-metrics"
pids=()
cleanup() {
  trap - EXIT INT TERM
  log "stopping"
  # Reverse start order, each to its end: the gateway flushes its last
  # batch to victoria-metrics before that stops.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listens on port $1; see $data/*.log"
  exit 1
}

victoria-metrics -httpListenAddr="127.0.0.1:$VM_PORT" \
  -storageDataPath="$data/victoria-metrics" -retentionPeriod=100y \
  -search.latencyOffset=1s >"$data/victoria-metrics.log" 2>&1 &
pids+=($!)
wait_port $VM_PORT

# time-scale 3600: one real second is one hour of pump life, so the bearing's
# wear (and the model's prediction of it) visibly moves during a demo.
target/release/ironbridge-sim serve --bind "127.0.0.1:$SIM_PORT" --seed 7 \
  --time-scale 3600 >"$data/simulator.log" 2>&1 &
pids+=($!)
wait_port $SIM_PORT

# The spindle's login: the simulator and the gateway read the password from
# the environment (config/example.toml names the variable), never from a
# file or a command line.
if [ -z "${IRONBRIDGE_SPINDLE_PASSWORD:-}" ]; then
  IRONBRIDGE_SPINDLE_PASSWORD="demo-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
fi
export IRONBRIDGE_SPINDLE_PASSWORD
# The gateway's admin (config/example.toml): changes model versions.
if [ -z "${IRONBRIDGE_ADMIN_PASSWORD:-}" ]; then
  IRONBRIDGE_ADMIN_PASSWORD="admin-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
fi
export IRONBRIDGE_ADMIN_PASSWORD
# time-scale 600: ten minutes of spindle life per second. The simulator
# trusts the gateway's new client certificate (demo only).
target/release/ironbridge-sim serve-opcua --bind "127.0.0.1:$SPINDLE_PORT" --seed 7 \
  --time-scale 600 --bearing-signature "${SPINDLE_BEARING_SIGNATURE:-1}" \
  --pki-dir "$data/spindle-pki" --user operator \
  --password-env IRONBRIDGE_SPINDLE_PASSWORD --trust-client-certs \
  >"$data/spindle.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  grep -q "^listening on" "$data/spindle.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "^listening on" "$data/spindle.log" || { log "the spindle simulator did not start; see $data/spindle.log"; exit 1; }

target/release/ironbridge run --config config/example.toml >"$data/gateway.log" 2>&1 &
gateway=$!
pids+=($gateway)
# The gateway says when everything is up (a bare TCP probe of the OPC UA
# port would only make it log a failed handshake).
for _ in $(seq 1 300); do
  grep -q "gateway running" "$data/gateway.log" 2>/dev/null && break
  kill -0 "$gateway" 2>/dev/null || { log "the gateway stopped:"; cat "$data/gateway.log" >&2; exit 1; }
  sleep 0.1
done
grep -q "gateway running" "$data/gateway.log" || { log "the gateway did not start; see $data/gateway.log"; exit 1; }

cat <<EOT

IronBridge demo is running.
  OPC UA endpoint : opc.tcp://127.0.0.1:$OPCUA_PORT/  (demo: also an anonymous, no-security endpoint on loopback)
  Watch it        : .venv/bin/python scripts/opcua_watch.py opc.tcp://127.0.0.1:$OPCUA_PORT/
  Store (InfluxDB v2 write API, victoria-metrics): http://127.0.0.1:$VM_PORT/
  Predictions     : curl -s 'http://127.0.0.1:$VM_PORT/api/v1/query?query=prediction_bearing_wear'
  Process values  : curl -s 'http://127.0.0.1:$VM_PORT/api/v1/query?query={__name__=~"process_.*"}'
  Health, metrics : curl -s http://127.0.0.1:9184/ready ; curl -s http://127.0.0.1:9184/metrics
  Machines        : pump-1 (Modbus TCP, 127.0.0.1:$SIM_PORT), spindle-1 (OPC UA, opc.tcp://127.0.0.1:$SPINDLE_PORT/)
  Find variables  : IRONBRIDGE_PASSWORD=$IRONBRIDGE_SPINDLE_PASSWORD target/release/ironbridge discover opc.tcp://127.0.0.1:$SPINDLE_PORT/ --username operator --trust-server-cert --pki-dir $data/pki/client
  Model versions  : IRONBRIDGE_PASSWORD=$IRONBRIDGE_ADMIN_PASSWORD target/release/ironbridge model shadow|activate|rollback|unshadow
                      --endpoint opc.tcp://127.0.0.1:$OPCUA_PORT/ --model spindle-wear [--version V] --username admin
                      --trust-server-cert --pki-dir $data/cli-pki
                    The first call is refused until you trust the command's certificate:
                      mv $data/pki/rejected/*.der $data/pki/trusted/   (README.md, "Updating a model")
  In a new shell, run "source scripts/env.sh" first (libtorch's libraries for target/release/ironbridge).
  Logs            : $data/*.log (the gateway's: tail -f $data/gateway.log)
Press Ctrl-C to stop.
EOT

if [ -n "${IRONBRIDGE_DEMO_SECONDS:-}" ]; then
  sleep "$IRONBRIDGE_DEMO_SECONDS"
else
  wait
fi
