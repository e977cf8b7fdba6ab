#!/usr/bin/env python3
"""Check a published example model against its manifest and recording.

    .venv/bin/python models/training/check_model.py models/examples/spindle-wear/1.0.0

Verifies, and exits non-zero with every failure listed unless all hold:

- the sha256 of model.pt and of the training data equal the manifest's;
- each input's and the output's quantiles (the drift reference) are the
  recording's training rows' (and the model's outputs on them);
- the manifest's name, inputs (names, units, ranges) and outputs are the
  ones the training script defines for that model;
- model.pt, run through TorchScript on the holdout lifetime the training
  script selects, gives the MAE and R² the manifest records (to the
  manifest's 6 decimals) and they meet the manifest's bounds.

Shares the data loading, holdout split and metrics with
train_bearing_model.py, so the check measures what training measured.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bearing_model as tbm  # noqa: E402

# The manifest stores metrics rounded to 6 decimals.
TOLERANCE = 1e-6


def check(version_dir: Path) -> list[str]:
    problems: list[str] = []
    manifest = tomllib.loads((version_dir / "manifest.toml").read_text(encoding="utf-8"))
    specs = {spec.model_name: spec for spec in tbm.MACHINES.values()}
    spec = specs.get(manifest["name"])
    if spec is None:
        return [f"no training spec makes a model named {manifest['name']!r}"]

    model_bytes = (version_dir / manifest["file"]).read_bytes()
    if tbm.sha256_bytes(model_bytes) != manifest["sha256"]:
        problems.append(f"{manifest['file']}: sha256 differs from the manifest")

    provenance = manifest["provenance"]
    data_path = tbm.REPO_ROOT / provenance["training_data"]
    if tbm.sha256_bytes(data_path.read_bytes()) != provenance["training_data_sha256"]:
        problems.append(f"{data_path}: sha256 differs from the manifest's training_data_sha256")

    inputs = [(i["name"], i["unit"], i["min"], i["max"]) for i in manifest["inputs"]]
    expected_inputs = [(i.name, i.unit, i.min, i.max) for i in spec.inputs]
    if inputs != expected_inputs:
        problems.append(f"inputs {inputs} differ from the training script's {expected_inputs}")
    outputs = [(o["name"], o.get("unit")) for o in manifest["outputs"]]
    if outputs != spec.outputs:
        problems.append(f"outputs {outputs} differ from the training script's {spec.outputs}")

    torch.set_num_threads(1)
    data = tbm.load_recording(spec, data_path)
    parts = tbm.split(spec, data)
    module = torch.jit.load(str(version_dir / manifest["file"]))
    pred = tbm.predict(module, tbm.features(spec, data, parts.holdout))
    mae, r2 = tbm.metrics(pred, data[spec.label][parts.holdout])
    print(f"{manifest['name']} {manifest['version']}: holdout bearing #{parts.holdout_life}, "
          f"{int(parts.holdout.sum())} rows: MAE {mae:.6f}, R² {r2:.6f}")

    acceptance = manifest["acceptance"]
    for metric, measured in (("mae", mae), ("r2", r2)):
        recorded = acceptance.get(metric, {}).get("value")
        if recorded is None:
            problems.append(f"the manifest records no {metric}")
        elif abs(recorded - measured) > TOLERANCE:
            problems.append(f"{metric}: model.pt gives {measured:.6f}, the manifest says {recorded}")
    if not tbm.accepted(spec, mae, r2):
        problems.append(f"MAE {mae:.6f} / R² {r2:.6f} miss the bounds "
                        f"(MAE ≤ {spec.mae_max}, R² ≥ {spec.r2_min})")
    # The training distribution (drift reference), recomputed from the
    # recording and the model file.
    input_q, output_q = tbm.distribution(spec, tbm.features(spec, data, parts.train), module)
    for kind, entries, expected in (("inputs", manifest["inputs"], input_q),
                                    ("outputs", manifest["outputs"], output_q)):
        for entry, want in zip(entries, expected):
            got = entry.get("quantiles")
            if got is None:
                problems.append(f"{kind} {entry['name']}: no quantiles (drift reference)")
            elif any(abs(a - b) > TOLERANCE for a, b in zip(got, want)) or len(got) != len(want):
                problems.append(f"{kind} {entry['name']}: quantiles {got} differ from the recording's {want}")
    if acceptance.get("mae", {}).get("max") != spec.mae_max or \
            acceptance.get("r2", {}).get("min") != spec.r2_min:
        problems.append("the manifest's bounds differ from the training script's")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version_dirs", type=Path, nargs="+", help="e.g. models/examples/spindle-wear/1.0.0")
    args = parser.parse_args()
    failed = False
    for version_dir in args.version_dirs:
        for problem in check(version_dir):
            print(f"{version_dir}: {problem}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
