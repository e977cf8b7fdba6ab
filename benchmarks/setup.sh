#!/usr/bin/env bash
# The reference gateway's one package beyond the project's venv
# (scripts/setup.sh: torch, pymodbus): influxdb-client, pinned. Idempotent:
# installs only when the pinned version is missing.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="$root/.venv/bin/python"
[ -x "$python" ] || { echo "$python is missing: run scripts/setup.sh first" >&2; exit 1; }
INFLUXDB_CLIENT_VERSION=1.50.0
if [ "$("$python" -c 'import influxdb_client; print(influxdb_client.__version__)' 2>/dev/null)" != "$INFLUXDB_CLIENT_VERSION" ]; then
  "$python" -m pip install -q --disable-pip-version-check "influxdb-client==$INFLUXDB_CLIENT_VERSION"
fi
