#!/usr/bin/env python3
"""Train the example bearing-wear model from a simulator recording.

Reads a CSV written by `ironbridge-sim record`, holds out the last complete
bearing lifetime, trains a small MLP (5 sensor inputs -> bearing_wear) with
the input normalization baked into the module, checks acceptance metrics on
the holdout, and only if they pass publishes

    <out>/<version>/model.pt        TorchScript
    <out>/<version>/manifest.toml   docs/manifest-format.md

Run with the project's venv: .venv/bin/python models/training/train_bearing_model.py --help
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "bearing-wear"

# Model inputs in order, with units and the valid range the gateway enforces.
# Ranges come from the machine's physical limits, not the training data's
# min/max, so normal operation never falls outside them:
#   speed: drive range up to ~110 % of the 2950 rpm rated speed; below
#          600 rpm the bearing carries too little load to show wear, and a
#          stopped pump says nothing about it, so those rows are not fed.
#   current: 0 A up to well above the ~32 A full-load current.
#   temperature: ambient extremes up to the 120 °C grease limit.
#   vibration: the full ISO 10816 velocity scale.
#   pressure: up to the PN10 casing rating.
INPUTS = [
    ("speed_rpm", "rpm", 600.0, 3200.0),
    ("motor_current_a", "A", 0.0, 50.0),
    ("bearing_temp_c", "°C", -20.0, 120.0),
    ("vibration_mm_s", "mm/s", 0.0, 45.0),
    ("discharge_pressure_bar", "bar", 0.0, 10.0),
]
OUTPUTS = [("bearing_wear", "1")]

# Acceptance bounds on the holdout lifetime.
MAE_MAX = 0.05
R2_MIN = 0.90


class BearingWearModel(nn.Module):
    """Raw sensor values [batch, 5] -> wear [batch, 1] in [0, 1]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 32) -> None:
        super().__init__()
        # Buffers, not parameters: saved in the TorchScript file, not trained.
        self.register_buffer("mean", mean.reshape(1, -1))
        self.register_buffer("std", std.reshape(1, -1))
        self.net = nn.Sequential(
            nn.Linear(len(INPUTS), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def unclamped(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Wear outside [0, 1] has no meaning; training uses the unclamped
        # output so the gradient never vanishes at the bounds.
        return torch.clamp(self.unclamped(x), 0.0, 1.0)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_recording(path: Path) -> dict[str, np.ndarray]:
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    needed = ["t_s", "running", "bearing_wear"] + [name for name, *_ in INPUTS]
    missing = [n for n in needed if n not in (data.dtype.names or ())]
    if missing:
        sys.exit(f"{path}: missing columns {missing}")
    return {name: data[name] for name in data.dtype.names}


def lifetimes(wear: np.ndarray) -> np.ndarray:
    """Index of the bearing each row belongs to (a new one after each drop)."""
    replaced = np.concatenate([[0], (np.diff(wear) < 0).astype(np.int64)])
    return np.cumsum(replaced)


def in_valid_range(data: dict[str, np.ndarray]) -> np.ndarray:
    mask = data["running"] == 1
    for name, _unit, lo, hi in INPUTS:
        mask &= (data[name] >= lo) & (data[name] <= hi)
    return mask


def metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    mae = float(np.mean(np.abs(pred - truth)))
    ss_res = float(np.sum((pred - truth) ** 2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    return mae, 1.0 - ss_res / ss_tot


def code_commit(script: Path) -> str:
    """HEAD, unless the training script differs from it (then 'uncommitted')."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(script)],
            cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return "uncommitted" if dirty or not head else head


def repo_relative(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path.resolve())


def toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def toml_float(value: float) -> str:
    text = repr(float(value))
    return text if ("." in text or "e" in text or "inf" in text or "nan" in text) else text + ".0"


def manifest_text(version: str, model_sha: str, description: str, data_ref: str,
                  data_sha: str, commit: str, script: str, mae: float, r2: float) -> str:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"name = {toml_string(MODEL_NAME)}",
        f"version = {toml_string(version)}",
        'file = "model.pt"',
        f"sha256 = {toml_string(model_sha)}",
        f"created_at = {toml_string(created)}",
        f"description = {toml_string(description)}",
        "",
        "# Inputs in the order the model takes them (one row = one float32 per input).",
    ]
    for name, unit, lo, hi in INPUTS:
        lines += [
            "[[inputs]]",
            f"name = {toml_string(name)}",
            f"unit = {toml_string(unit)}",
            f"min = {toml_float(lo)}",
            f"max = {toml_float(hi)}",
            "",
        ]
    for name, unit in OUTPUTS:
        lines += ["[[outputs]]", f"name = {toml_string(name)}", f"unit = {toml_string(unit)}", ""]
    lines += [
        "[provenance]",
        f"training_data = {toml_string(data_ref)}",
        f"training_data_sha256 = {toml_string(data_sha)}",
        f"code_commit = {toml_string(commit)}",
        f"training_script = {toml_string(script)}",
        "",
        "# Measured on the holdout bearing lifetime.",
        "[acceptance.mae]",
        f"value = {toml_float(round(mae, 6))}",
        f"max = {toml_float(MAE_MAX)}",
        "[acceptance.r2]",
        f"value = {toml_float(round(r2, 6))}",
        f"min = {toml_float(R2_MIN)}",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="CSV from `ironbridge-sim record`")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models/examples" / MODEL_NAME,
                        help="model folder; the version goes into <out>/<version>/")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--force", action="store_true", help="replace an existing version folder")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    data_bytes = args.data.read_bytes()
    data = load_recording(args.data)
    life = lifetimes(data["bearing_wear"])
    usable = in_valid_range(data)

    # Hold out the last bearing that ran to failure: a whole lifetime the
    # model never saw, so the metric measures generalization across bearings
    # rather than interpolation between neighbouring samples.
    failed = sorted({int(i) for i in life[data["bearing_wear"] >= 1.0]})
    if len(failed) < 2:
        sys.exit("need at least two failed bearings in the recording (record longer)")
    holdout_life = failed[-1]
    holdout = usable & (life == holdout_life)
    train = usable & (life != holdout_life)

    def features(mask: np.ndarray) -> torch.Tensor:
        cols = [data[name][mask] for name, *_ in INPUTS]
        return torch.tensor(np.stack(cols, axis=1), dtype=torch.float32)

    x_train, x_hold = features(train), features(holdout)
    y_train = torch.tensor(data["bearing_wear"][train], dtype=torch.float32).reshape(-1, 1)
    y_hold = data["bearing_wear"][holdout]

    model = BearingWearModel(x_train.mean(dim=0), x_train.std(dim=0).clamp_min(1e-6))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    batch = 256
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model.unclamped(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        scheduler.step()
        if epoch % 25 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:4d}  train mse {total / len(x_train):.6f}", file=sys.stderr)

    model.eval()
    # Frozen weights: the exported module builds no autograd graph even if
    # the caller forgets no_grad.
    model.requires_grad_(False)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    model_bytes = buffer.getvalue()

    # Metrics come from the exported file itself, loaded back, so what is
    # measured is exactly what is published.
    loaded = torch.jit.load(io.BytesIO(model_bytes))
    with torch.no_grad():
        pred = loaded(x_hold).numpy().reshape(-1).astype(np.float64)
    mae, r2 = metrics(pred, y_hold)
    print(f"holdout: bearing #{holdout_life}, {len(y_hold)} rows; train: {len(y_train)} rows", file=sys.stderr)
    print(f"holdout MAE {mae:.4f} (max {MAE_MAX}), R² {r2:.4f} (min {R2_MIN})", file=sys.stderr)
    if not (math.isfinite(mae) and math.isfinite(r2) and mae <= MAE_MAX and r2 >= R2_MIN):
        print("acceptance failed: model not published", file=sys.stderr)
        return 1

    target = args.out / args.version
    if target.exists() and not args.force:
        print(f"{target} exists; pass --force to replace it", file=sys.stderr)
        return 1
    script_path = Path(__file__).resolve()
    description = (
        "Bearing wear of the simulated centrifugal pump from five sensor values; "
        f"example model, holdout = bearing lifetime #{holdout_life} of the recording."
    )
    manifest = manifest_text(
        version=args.version,
        model_sha=sha256_bytes(model_bytes),
        description=description,
        data_ref=repo_relative(args.data),
        data_sha=sha256_bytes(data_bytes),
        commit=code_commit(script_path),
        script=repo_relative(script_path),
        mae=mae,
        r2=r2,
    )
    tomllib.loads(manifest)  # never publish a manifest that does not parse

    # Write next to the target and swap in whole, so a reader never sees a
    # model.pt without its matching manifest.
    args.out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.version}-", dir=args.out))
    staging.chmod(0o755)  # mkdtemp makes it private; a published model is not
    try:
        (staging / "model.pt").write_bytes(model_bytes)
        (staging / "manifest.toml").write_text(manifest, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    print(f"published {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
