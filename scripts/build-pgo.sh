#!/usr/bin/env bash
# Profile-guided release build of `ironbridge` for this machine's
# architecture (BENCHMARKS.md §25: 3-16 % less CPU per value on issue 10's
# workload, at 100 ms polls and saturated, and a smaller binary).
#
#   1. builds the gateway instrumented (-Cprofile-generate),
#   2. runs it on issue 10's workload (10 simulated Modbus machines, the
#      benchmark's model, a local victoria-metrics store) at 100 ms polls
#      and at 1 ms polls, 20 s each (scripts/bench_reference.py),
#   3. merges the profile and builds again with it (-Cprofile-use).
#
# Takes two full release builds (20-40 min on 2 cores). Everything lands in
# target/pgo/; the binary is printed last:
#   target/pgo/use/<host triple>/release/ironbridge
# It needs libtorch's libraries beside it as the plain release build does
# (scripts/env.sh). The profile is of this architecture's code: an aarch64
# build (scripts/build-aarch64.sh) cannot use it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[build-pgo] $*" >&2; }

bash scripts/setup.sh
bash benchmarks/setup.sh
source scripts/env.sh
# llvm-profdata, matching rustc's LLVM (rustup's llvm-tools component).
rustup component add llvm-tools >/dev/null
profdata=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-profdata -type f | head -n 1)
if [ -z "$profdata" ]; then
  echo "llvm-profdata not found under $(rustc --print sysroot); rustup component add llvm-tools" >&2
  exit 1
fi
host=$(rustc -vV | sed -n 's/^host: //p')
pgo="$root/target/pgo"
rm -rf "$pgo/data" "$pgo/ironbridge.profdata"

# The simulated machines (plain release build, as the benchmark runs them).
cargo build --release --locked -p ironbridge-simulator
# --target keeps RUSTFLAGS off build scripts and proc macros.
log "building the instrumented gateway"
RUSTFLAGS="-Cprofile-generate=$pgo/data" cargo build --release --locked -p ironbridge \
  --target "$host" --target-dir "$pgo/generate"
log "running it on issue 10's workload"
python3 scripts/bench_reference.py --poll-ms 100,1 --rounds 1 --seconds 20 --warmup 5 \
  --contestants ironbridge-baseline --baseline "$pgo/generate/$host/release/ironbridge"
"$profdata" merge -o "$pgo/ironbridge.profdata" "$pgo/data"
log "building with the profile"
RUSTFLAGS="-Cprofile-use=$pgo/ironbridge.profdata" cargo build --release --locked -p ironbridge \
  --target "$host" --target-dir "$pgo/use"
echo "$pgo/use/$host/release/ironbridge"
