#!/usr/bin/env python3
"""Reference predictions from Python torch, independent of the gateway.

Reads JSON from stdin: {"model": "<path to model.pt>", "rows": [[x1, x2, ...], ...]}
Writes JSON to stdout: {"outputs": [[y1, ...], ...], "torch": "<version>"}

The rows are fed as float32, as the gateway does.
"""
import json
import sys

import torch


def main():
    request = json.load(sys.stdin)
    model = torch.jit.load(request["model"], map_location="cpu")
    model.eval()
    with torch.no_grad():
        x = torch.tensor(request["rows"], dtype=torch.float32)
        y = model(x)
    json.dump({"outputs": y.tolist(), "torch": torch.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
