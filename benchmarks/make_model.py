#!/usr/bin/env python3
"""Writes the benchmark's model: an 8 -> 32 -> 1 MLP (TorchScript) and a
manifest the gateway accepts, into OUT/<name>/<version>/.

The model is untrained (seeded weights): the benchmark measures the cost of
feeding, running and storing it, not what it predicts. Inputs are the
register banks' first eight values (`ironbridge-sim serve-registers`: value
k lies in [k, k + 1)), so no row is skipped as out of range. No quantiles:
drift monitoring is off for this model, in the gateway as in the reference.

Usage: benchmarks/make_model.py --out DIR [--name bench-mlp] [--version 1.0.0]
"""
import argparse
import hashlib
import io
import os
import sys
from datetime import datetime, timezone

import torch

INPUTS = [f"v{k:02d}" for k in range(8)]


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = torch.nn.Linear(len(INPUTS), 32)
        self.out = torch.nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="bench-mlp")
    ap.add_argument("--version", default="1.0.0")
    args = ap.parse_args()

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Mlp().eval()), buffer)
    model = buffer.getvalue()
    folder = os.path.join(args.out, args.name, args.version)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.pt"), "wb") as f:
        f.write(model)

    inputs = "".join(
        f'\n[[inputs]]\nname = "{name}"\nunit = "1"\nmin = {k}.0\nmax = {k + 1}.0\n'
        for k, name in enumerate(INPUTS))
    manifest = f"""name = "{args.name}"
version = "{args.version}"
file = "model.pt"
sha256 = "{hashlib.sha256(model).hexdigest()}"
created_at = "{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}"
description = "Benchmark load: untrained 8 -> 32 -> 1 MLP (benchmarks/make_model.py)."
{inputs}
[[outputs]]
name = "y"

[provenance]
training_data = "none: seeded random weights"
training_data_sha256 = "{'0' * 64}"
code_commit = "uncommitted"
training_script = "benchmarks/make_model.py"

# Not a trained model; the gateway requires one metric, this one says so.
[acceptance.untrained]
value = 0.0
max = 0.0
"""
    with open(os.path.join(folder, "manifest.toml"), "w") as f:
        f.write(manifest)
    print(folder)


if __name__ == "__main__":
    sys.exit(main())
