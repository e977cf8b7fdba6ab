#!/usr/bin/env bash
# Regenerates the example model models/examples/bearing-wear/<version>/:
# records the simulated pump (seed 7, 2000 simulated hours, one row every
# 240 s: ~30k rows, ~1.5 MB, four bearing lifetimes) and trains on it.
# The model is published only if it passes its acceptance bounds.
#
#   scripts/train-example-model.sh            # version 1.0.0
#   VERSION=1.1.0 scripts/train-example-model.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/env.sh
source scripts/env.sh

version=${VERSION:-1.0.0}
data=models/training/data/pump-seed-7.csv

cargo run --release -q -p ironbridge-simulator -- \
  record --seed 7 --duration-h 2000 --step-s 240 --out "$data"
"$VIRTUAL_ENV/bin/python" models/training/train_bearing_model.py \
  --data "$data" --out models/examples/bearing-wear --version "$version" --force
