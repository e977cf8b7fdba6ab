#!/usr/bin/env python3
"""Train an example bearing model from a simulator recording.

One script for both simulated machines (`--machine`):

    pump     `ironbridge-sim record`                    -> bearing-wear
    spindle  `ironbridge-sim record --machine spindle`  -> spindle-wear

Reads the CSV, holds out the last complete bearing lifetime, trains a small
MLP (5 sensor inputs -> the bearing's ground-truth condition, 0..1) with the
input normalization baked into the module, checks acceptance metrics on the
holdout, and only if they pass publishes

    <out>/<version>/model.pt        TorchScript
    <out>/<version>/manifest.toml   docs/manifest-format.md

`check_model.py` recomputes a published model's holdout metrics.

With `--mlflow URL` the published version folder also goes to an MLflow
Model Registry (`publish_to_mlflow.py`: a run with the two files under
`ironbridge/`, the pytorch flavor under `model/`, the acceptance metrics and
the lineage tags; a registered model version; `--mlflow-alias` pointed at
it), where a gateway with `[models.registry]` picks it up.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Input:
    name: str
    unit: str
    min: float
    max: float


@dataclass(frozen=True)
class MachineSpec:
    """What differs between the machines; everything else is shared."""

    model_name: str
    # Model inputs in order, with units and the valid range the gateway
    # enforces (physical limits of the machine, not the data's min/max).
    inputs: tuple[Input, ...]
    # Ground-truth column of the recording; also the model's one output.
    label: str
    # Acceptance bounds on the holdout lifetime.
    mae_max: float
    r2_min: float
    # Manifest description; {holdout} is the held-out lifetime's index.
    description: str

    @property
    def outputs(self) -> list[tuple[str, str]]:
        return [(self.label, "1")]

# Acceptance bounds of the spindle model on its holdout lifetime. Looser
# than the pump's (0.05 / 0.90) on MAE because the spindle hides early
# damage: at degradation 0.3 and top speed the defect adds only ~0.4 mm/s
# of vibration and ~3 K, as much as the ±3 K daily ambient swing or the
# 15-85 % cutting-load spread, so a model of one reading errs by ~0.05 on
# healthy bearings whatever it learns. Measured leaving out each of the
# seven lifetimes of the seed-7 recording in turn: MAE 0.036-0.042, R²
# 0.938-0.963; predicting the mean gives MAE ~0.19, R² ~0. The bounds sit
# about 1.5x (MAE) and 0.04 (R²) beyond the worst of those, so a retrain
# on a different recording passes while a broken input or pipeline fails,
# and an MAE of 0.06 is a fifth of the 0.3-wide fault-state bands.
SPINDLE_MAE_MAX = 0.06
SPINDLE_R2_MIN = 0.90


MACHINES = {
    # The centrifugal pump over Modbus (simulator/src/process.rs). Ranges:
    #   speed: drive range up to ~110 % of the 2950 rpm rated speed; below
    #          600 rpm the bearing carries too little load to show wear, and a
    #          stopped pump says nothing about it, so those rows are not fed.
    #   current: 0 A up to well above the ~32 A full-load current.
    #   temperature: ambient extremes up to the 120 °C grease limit.
    #   vibration: the full ISO 10816 velocity scale.
    #   pressure: up to the PN10 casing rating.
    "pump": MachineSpec(
        model_name="bearing-wear",
        inputs=(
            Input("speed_rpm", "rpm", 600.0, 3200.0),
            Input("motor_current_a", "A", 0.0, 50.0),
            Input("bearing_temp_c", "°C", -20.0, 120.0),
            Input("vibration_mm_s", "mm/s", 0.0, 45.0),
            Input("discharge_pressure_bar", "bar", 0.0, 10.0),
        ),
        label="bearing_wear",
        mae_max=0.05,
        r2_min=0.90,
        description=(
            "Bearing wear of the simulated centrifugal pump from five sensor values; "
            "example model, holdout = bearing lifetime #{holdout} of the recording."
        ),
    ),
    # The 15 kW, 18 000 rpm motor spindle over OPC UA
    # (simulator/src/spindle.rs). Ranges:
    #   speed: 20 % of top speed (as for the pump: below it the bearing
    #          defect terms, all proportional to speed, say too little; a
    #          stopped spindle says nothing) up to 18 000 rpm plus the
    #          drive's ~5 % overspeed margin (the reading carries ±5 rpm).
    #   load: 0 up to 200 % of rated torque, the drive's short-time peak.
    #   current: 0 A up to 70 A, the drive's current limit (~2x the ~34 A
    #            the spindle draws at rated torque).
    #   temperature: ambient extremes up to the 120 °C grease limit.
    #   vibration: the full ISO 10816 velocity scale.
    "spindle": MachineSpec(
        model_name="spindle-wear",
        inputs=(
            Input("speed_rpm", "rpm", 3600.0, 19000.0),
            Input("load_pct", "%", 0.0, 200.0),
            Input("motor_current_a", "A", 0.0, 70.0),
            Input("bearing_temp_c", "°C", -20.0, 120.0),
            Input("vibration_mm_s", "mm/s", 0.0, 45.0),
        ),
        label="bearing_degradation",
        mae_max=SPINDLE_MAE_MAX,
        r2_min=SPINDLE_R2_MIN,
        description=(
            "Bearing degradation of the simulated motor spindle (OPC UA) from five sensor "
            "values; example model, holdout = bearing lifetime #{holdout} of the recording."
        ),
    ),
}


class BearingWearModel(nn.Module):
    """Raw sensor values [batch, n_inputs] -> condition [batch, 1] in [0, 1]."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, hidden: int = 32) -> None:
        super().__init__()
        # Buffers, not parameters: saved in the TorchScript file, not trained.
        self.register_buffer("mean", mean.reshape(1, -1))
        self.register_buffer("std", std.reshape(1, -1))
        self.net = nn.Sequential(
            nn.Linear(mean.numel(), hidden),
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


def load_recording(spec: MachineSpec, path: Path) -> dict[str, np.ndarray]:
    data = np.genfromtxt(path, delimiter=",", names=True, dtype=np.float64)
    needed = ["t_s", "running", spec.label] + [i.name for i in spec.inputs]
    missing = [n for n in needed if n not in (data.dtype.names or ())]
    if missing:
        sys.exit(f"{path}: missing columns {missing}")
    return {name: data[name] for name in data.dtype.names}


def lifetimes(wear: np.ndarray) -> np.ndarray:
    """Index of the bearing each row belongs to (a new one after each drop)."""
    replaced = np.concatenate([[0], (np.diff(wear) < 0).astype(np.int64)])
    return np.cumsum(replaced)


def in_valid_range(spec: MachineSpec, data: dict[str, np.ndarray]) -> np.ndarray:
    mask = data["running"] == 1
    for i in spec.inputs:
        mask &= (data[i.name] >= i.min) & (data[i.name] <= i.max)
    return mask


@dataclass(frozen=True)
class Split:
    holdout_life: int
    train: np.ndarray   # row masks
    holdout: np.ndarray


def split(spec: MachineSpec, data: dict[str, np.ndarray]) -> Split:
    """Holds out the last bearing that ran to failure: a whole lifetime the
    model never saw, so the metric measures generalization across bearings
    rather than interpolation between neighbouring samples. Only rows the
    gateway would feed (running, every input in range) are used."""
    life = lifetimes(data[spec.label])
    usable = in_valid_range(spec, data)
    failed = sorted({int(i) for i in life[data[spec.label] >= 1.0]})
    if len(failed) < 2:
        sys.exit("need at least two failed bearings in the recording (record longer)")
    holdout_life = failed[-1]
    return Split(holdout_life, usable & (life != holdout_life), usable & (life == holdout_life))


def features(spec: MachineSpec, data: dict[str, np.ndarray], mask: np.ndarray) -> torch.Tensor:
    cols = [data[i.name][mask] for i in spec.inputs]
    return torch.tensor(np.stack(cols, axis=1), dtype=torch.float32)


def predict(module: torch.jit.ScriptModule, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return module(x).numpy().reshape(-1).astype(np.float64)


def metrics(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    mae = float(np.mean(np.abs(pred - truth)))
    ss_res = float(np.sum((pred - truth) ** 2))
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    return mae, 1.0 - ss_res / ss_tot


def accepted(spec: MachineSpec, mae: float, r2: float) -> bool:
    return math.isfinite(mae) and math.isfinite(r2) and mae <= spec.mae_max and r2 >= spec.r2_min


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


# Quantile edges written into the manifest for drift (docs/manifest-format.md):
# the minimum, the deciles, the maximum.
QUANTILE_LEVELS = [i / 10 for i in range(11)]


def quantiles(values: np.ndarray) -> list[float]:
    return [round(float(q), 6) for q in np.quantile(values, QUANTILE_LEVELS)]


def distribution(spec: MachineSpec, x_train: torch.Tensor,
                 module: torch.jit.ScriptModule) -> tuple[list[list[float]], list[list[float]]]:
    """The training distribution of each input and of the model's output on
    the training rows, as quantile edges."""
    inputs = [quantiles(x_train[:, j].numpy().astype(np.float64)) for j in range(x_train.shape[1])]
    outputs = [quantiles(predict(module, x_train))]
    return inputs, outputs


def toml_list(values: list[float]) -> str:
    return "[" + ", ".join(toml_float(v) for v in values) + "]"


def manifest_text(spec: MachineSpec, version: str, model_sha: str, description: str,
                  data_ref: str, data_sha: str, commit: str, script: str,
                  mae: float, r2: float,
                  input_quantiles: list[list[float]], output_quantiles: list[list[float]]) -> str:
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"name = {toml_string(spec.model_name)}",
        f"version = {toml_string(version)}",
        'file = "model.pt"',
        f"sha256 = {toml_string(model_sha)}",
        f"created_at = {toml_string(created)}",
        f"description = {toml_string(description)}",
        "",
        "# Inputs in the order the model takes them (one row = one float32 per input).",
    ]
    for i, q in zip(spec.inputs, input_quantiles):
        lines += [
            "[[inputs]]",
            f"name = {toml_string(i.name)}",
            f"unit = {toml_string(i.unit)}",
            f"min = {toml_float(i.min)}",
            f"max = {toml_float(i.max)}",
            f"quantiles = {toml_list(q)}",
            "",
        ]
    for (name, unit), q in zip(spec.outputs, output_quantiles):
        lines += ["[[outputs]]", f"name = {toml_string(name)}", f"unit = {toml_string(unit)}",
                  f"quantiles = {toml_list(q)}", ""]
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
        f"max = {toml_float(spec.mae_max)}",
        "[acceptance.r2]",
        f"value = {toml_float(round(r2, 6))}",
        f"min = {toml_float(spec.r2_min)}",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", choices=sorted(MACHINES), default="pump",
                        help="which simulated machine the recording is of (default pump)")
    parser.add_argument("--data", type=Path, required=True, help="CSV from `ironbridge-sim record`")
    parser.add_argument("--out", type=Path,
                        help="model folder; the version goes into <out>/<version>/ "
                             "(default models/examples/<model name>)")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--force", action="store_true", help="replace an existing version folder")
    parser.add_argument("--mlflow", metavar="URL",
                        help="also publish the version to this MLflow tracking server's registry")
    parser.add_argument("--mlflow-name",
                        help="registered model name (default: the model's name)")
    parser.add_argument("--mlflow-alias",
                        help="point this registry alias (e.g. champion) at the new version")
    args = parser.parse_args()
    spec = MACHINES[args.machine]
    out = args.out or REPO_ROOT / "models/examples" / spec.model_name

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    data_bytes = args.data.read_bytes()
    data = load_recording(spec, args.data)
    parts = split(spec, data)

    x_train, x_hold = features(spec, data, parts.train), features(spec, data, parts.holdout)
    y_train = torch.tensor(data[spec.label][parts.train], dtype=torch.float32).reshape(-1, 1)
    y_hold = data[spec.label][parts.holdout]

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
    exported = torch.jit.load(io.BytesIO(model_bytes))
    mae, r2 = metrics(predict(exported, x_hold), y_hold)
    input_quantiles, output_quantiles = distribution(spec, x_train, exported)
    print(f"holdout: bearing #{parts.holdout_life}, {len(y_hold)} rows; train: {len(y_train)} rows",
          file=sys.stderr)
    print(f"holdout MAE {mae:.4f} (max {spec.mae_max}), R² {r2:.4f} (min {spec.r2_min})",
          file=sys.stderr)
    if not accepted(spec, mae, r2):
        print("acceptance failed: model not published", file=sys.stderr)
        return 1

    target = out / args.version
    if target.exists() and not args.force:
        print(f"{target} exists; pass --force to replace it", file=sys.stderr)
        return 1
    script_path = Path(__file__).resolve()
    manifest = manifest_text(
        spec,
        version=args.version,
        model_sha=sha256_bytes(model_bytes),
        description=spec.description.format(holdout=parts.holdout_life),
        data_ref=repo_relative(args.data),
        data_sha=sha256_bytes(data_bytes),
        commit=code_commit(script_path),
        script=repo_relative(script_path),
        mae=mae,
        r2=r2,
        input_quantiles=input_quantiles,
        output_quantiles=output_quantiles,
    )
    tomllib.loads(manifest)  # never publish a manifest that does not parse

    # Write next to the target and swap in whole, so a reader never sees a
    # model.pt without its matching manifest.
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{args.version}-", dir=out))
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
    if args.mlflow:
        # The same function as the standalone script: the registry gets the
        # exact files just written, so its lineage and the edge's agree.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from publish_to_mlflow import publish

        registered = publish(target, args.mlflow, args.mlflow_name, args.mlflow_alias)
        print(f"registered {registered['name']} version {registered['version']} "
              f"({registered['source']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
