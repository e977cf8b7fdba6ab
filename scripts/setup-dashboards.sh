#!/usr/bin/env bash
# What the dashboards' test (tests/tests/dashboards.rs) and preview need
# beyond scripts/setup.sh. Idempotent: a second run checks and returns.
#
#   - node and npm (Debian's nodejs and npm, unless a node is installed)
#   - dashboards/schema-check/node_modules: @grafana/schema and the JSON
#     schema tools, exactly as dashboards/schema-check/package-lock.json
#     pins them (`npm ci`, from the npm registry); the same for
#     docker/compose-check (the Compose Specification's schema)
#   - with --preview: python3-matplotlib (Debian's), with which
#     scripts/preview-dashboards.sh draws the panels
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

log() { printf '[setup-dashboards] %s\n' "$*" >&2; }
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ "${1:-}" = "--preview" ] && ! /usr/bin/python3 -c 'import matplotlib' 2>/dev/null; then
  missing+=(python3-matplotlib)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The dashboards' schema check, and the compose file's
# (docker/compose-check: the Compose Specification's JSON schema, for
# tests/tests/compose_stack.rs).
for check in "$root/dashboards/schema-check" "$root/docker/compose-check"; do
  stamp="$check/node_modules/.ironbridge-lock-sha256"
  want=$(sha256sum "$check/package-lock.json" | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing npm packages of ${check#"$root"/}"
    # --ignore-scripts: none of them needs an install script; none runs.
    npm ci --prefix "$check" --ignore-scripts --no-audit --no-fund --loglevel=error
    printf '%s' "$want" > "$stamp"
  fi
done
