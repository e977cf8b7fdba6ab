#!/usr/bin/env bash
# Pictures of the Grafana dashboards for people without a Grafana: runs the
# dashboards' test (tests/tests/dashboards.rs: the gateway and the simulators
# fill a real InfluxDB 1.x and Prometheus for about a minute, then every
# panel query runs as Grafana would send it) and draws each dashboard's
# panels from those answers, laid out and titled as in the dashboard, into
# dashboards/preview/<dashboard>.png. Installs what it needs (scripts/setup.sh,
# scripts/setup-dashboards.sh --preview), like the test suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
bash scripts/setup-dashboards.sh --preview
source scripts/env.sh

answers=$(mktemp)
trap 'rm -f "$answers"' EXIT
IRONBRIDGE_DASHBOARD_PREVIEW="$answers" \
  cargo test --locked -p ironbridge-tests --test dashboards -- \
  every_dashboard_query_returns_the_series_it_shows
# Debian's python3 (its python3-matplotlib), not the venv: drawing needs no torch.
/usr/bin/python3 scripts/render_dashboards.py "$answers" dashboards dashboards/preview
