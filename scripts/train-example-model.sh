#!/usr/bin/env bash
# Regenerates an example model models/examples/<model>/<version>/: records
# its simulated machine (seed 7, 2000 simulated hours, one row every 240 s:
# ~30k rows) into models/training/data/, trains on it and checks the
# published file against its manifest (models/training/check_model.py).
# The model is published only if it passes its acceptance bounds.
#
#   scripts/train-example-model.sh                      # bearing-wear 1.0.0 (the Modbus pump)
#   MODEL=spindle-wear scripts/train-example-model.sh   # spindle-wear 1.0.0 (the OPC UA spindle)
#   VERSION=1.1.0 scripts/train-example-model.sh
#   MODEL=spindle-wear VERSION=1.1.0 BEARING_SIGNATURE=1.6 scripts/train-example-model.sh
#       (a spindle whose bearings wear differently: its own recording,
#       models/training/data/spindle-seed-7-signature-1.6.csv)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
# shellcheck source=scripts/env.sh
source scripts/env.sh

model=${MODEL:-bearing-wear}
version=${VERSION:-1.0.0}
case "$model" in
  bearing-wear) machine=pump ;;    # ~1.5 MB, four bearing lifetimes
  spindle-wear) machine=spindle ;; # ~2.0 MB, seven bearing lifetimes
  *) echo "MODEL must be bearing-wear or spindle-wear, not '$model'" >&2; exit 2 ;;
esac
signature=${BEARING_SIGNATURE:-1}
if [ "$signature" = 1 ]; then
  data=models/training/data/$machine-seed-7.csv
  signature_args=()
else
  [ "$machine" = spindle ] || { echo "BEARING_SIGNATURE applies to MODEL=spindle-wear only" >&2; exit 2; }
  data=models/training/data/$machine-seed-7-signature-$signature.csv
  signature_args=(--bearing-signature "$signature")
fi

cargo run --release -q -p ironbridge-simulator -- \
  record --machine "$machine" --seed 7 --duration-h 2000 --step-s 240 "${signature_args[@]}" --out "$data"
"$VIRTUAL_ENV/bin/python" models/training/train_bearing_model.py --machine "$machine" \
  --data "$data" --out "models/examples/$model" --version "$version" --force
"$VIRTUAL_ENV/bin/python" models/training/check_model.py "models/examples/$model/$version"
