#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what it needs
# (scripts/setup.sh, idempotent), then runs every Rust test. Integration tests
# start their own victoria-metrics, InfluxDB 1.x, Prometheus, pymodbus and
# asyncua peers on free loopback ports. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# The aarch64 edge build, run under qemu by tests/tests/aarch64_edge_build.rs.
bash scripts/build-aarch64.sh
# cargo-deny (licenses, bans and sources of every dependency; deny.toml),
# built once from crates.io into ~/.cargo/bin; only the tests need it.
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  echo "[test] installing cargo-deny $DENY_VERSION (built from crates.io, a few minutes)"
  cargo install --quiet --locked cargo-deny --version "$DENY_VERSION"
fi
# node and the dashboard schema check's npm packages (tests/tests/dashboards.rs).
bash scripts/setup-dashboards.sh
source scripts/env.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# --no-fail-fast: one failing crate must not hide the results of the others.
set +e
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The unit tests of our patches to vendored crates (third_party/README.md),
# which the workspace excludes; their own Cargo.lock, a target folder of
# their own under target/ so the next run reuses it.
echo "== third_party/async-opcua-server: the patched modules' unit tests"
cargo test --locked --manifest-path third_party/async-opcua-server/Cargo.toml \
  --target-dir target/third_party --lib -- subscriptions:: subscription_tick login_throttle sync_sampler 2>&1 | tee -a "$log"
patch_status=${PIPESTATUS[0]}
if [ "$status" -eq 0 ]; then
  status=$patch_status
fi
set -e
# One total over every test binary (cargo prints one line per binary, the
# last of which is usually a doc-test run with nothing in it).
awk '/^test result:/ {
       for (i = 1; i <= NF; i++) {
         if ($(i+1) ~ /^passed/) p += $i
         if ($(i+1) ~ /^failed/) f += $i
         if ($(i+1) ~ /^ignored/) s += $i
       }
     }
     END { printf "Total: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
# What may enter the build (deny.toml): licenses, bans, sources. Advisories
# need github.com, which CI cannot reach (deny.toml says more).
echo "== cargo deny check licenses bans sources"
deny_status=0
cargo deny --locked check --hide-inclusion-graph licenses bans sources || deny_status=$?
if [ "$status" -eq 0 ]; then
  status=$deny_status
fi
exit "$status"
