#!/usr/bin/env bash
# The performance issue's workload (issue 10): IronBridge and the reference
# Python gateway (benchmarks/reference_gateway.py) in one run, alternating,
# at 100 ms polls and saturated (1 ms). Builds release binaries first.
# Arguments go to scripts/bench_reference.py (e.g. --rounds 3 --perf FILE);
# without any, it runs BENCHMARKS.md section 9's table.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash benchmarks/setup.sh
# --perf needs Debian's perf (linux-perf).
if [[ " $* " == *" --perf "* ]] && ! command -v perf >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y -q linux-perf; else sudo apt-get install -y -q linux-perf; fi
fi
source scripts/env.sh
cargo build --release --locked -p ironbridge -p ironbridge-simulator
if [ $# -eq 0 ]; then
  set -- --rounds 2 --poll-ms 100,1 --seconds 30 --warmup 5 \
    --contestants ironbridge,python,python-per-machine,python-opcua,ironbridge-disk
fi
python3 scripts/bench_reference.py "$@"
