#!/usr/bin/env python3
"""Publish one IronBridge model version folder to an MLflow Model Registry.

    .venv/bin/python models/training/publish_to_mlflow.py \\
        --mlflow http://127.0.0.1:5000 --alias champion \\
        models/examples/bearing-wear/1.0.0

The folder is one version as the gateway serves it (manifest.toml and the
TorchScript file it names, docs/manifest-format.md). This logs an MLflow run
with

    ironbridge/manifest.toml, ironbridge/<file>   the artifacts, unchanged
    model/                                        the same TorchScript module
                                                  as an MLflow pytorch model
                                                  (for a serving engine such
                                                  as MLServer)

the manifest's acceptance metrics as run metrics (mae, r2, ...) and its
lineage as tags (model sha256, training data sha256, code commit, the
IronBridge version), registers a model version whose source is the run's
`ironbridge` folder, and points the alias at it (docs/model-lifecycle.md,
"From an MLflow registry"). The gateway downloads exactly those two files
and checks the model's sha256 against the manifest before loading it.

Prints {"name", "version", "source", "run_id"} as JSON on stdout.
`train_bearing_model.py --mlflow URL` calls the same `publish`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# The artifact folder the gateway reads (the model version's source).
ARTIFACT_PATH = "ironbridge"
# The pytorch flavor of the same module, for a serving engine.
SERVING_PATH = "model"
READY_DEADLINE_S = 120.0


def ironbridge_version() -> str:
    """The workspace version in Cargo.toml: which IronBridge this was made for."""
    try:
        cargo = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text(encoding="utf-8"))
        return str(cargo["workspace"]["package"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def read_version(folder: Path, check_sha256: bool = True) -> tuple[dict, bytes, bytes]:
    """The manifest (parsed), its bytes and the model file's bytes."""
    manifest_bytes = (folder / "manifest.toml").read_bytes()
    manifest = tomllib.loads(manifest_bytes.decode("utf-8"))
    for key in ("name", "version", "file", "sha256"):
        if not isinstance(manifest.get(key), str) or not manifest[key]:
            raise ValueError(f"{folder}/manifest.toml has no {key}")
    if manifest["version"] != folder.name:
        raise ValueError(
            f"{folder}/manifest.toml says version {manifest['version']}, the folder is {folder.name}")
    model_bytes = (folder / manifest["file"]).read_bytes()
    actual = hashlib.sha256(model_bytes).hexdigest()
    if check_sha256 and actual != manifest["sha256"]:
        raise ValueError(f"{folder}/{manifest['file']} has sha256 {actual}, "
                         f"its manifest says {manifest['sha256']}; not published")
    return manifest, manifest_bytes, model_bytes


def sample_inputs(manifest: dict):
    """Rows across each input's valid range, as float32 (the model's dtype)."""
    import numpy as np

    columns = []
    for spec in manifest.get("inputs", []):
        low = float(spec.get("min", 0.0))
        high = float(spec.get("max", low + 1.0))
        columns.append(np.linspace(low, high, 8, dtype=np.float32))
    return np.stack(columns, axis=1).astype(np.float32)


def log_serving_model(model_bytes: bytes, manifest: dict) -> None:
    """The TorchScript module as an MLflow pytorch model at `model/`.

    With a signature, or MLServer refuses requests ("Input data should be
    pandas.DataFrame or numpy.ndarray"); pickled, as MLflow refuses the
    'pt2' format for a ScriptModule.
    """
    import io

    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    module = torch.jit.load(io.BytesIO(model_bytes))
    module.eval()
    x = sample_inputs(manifest)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / SERVING_PATH
        mlflow.pytorch.save_model(module, str(out), serialization_format="pickle",
                                  signature=infer_signature(x, y))
        mlflow.log_artifacts(str(out), artifact_path=SERVING_PATH)


def wait_ready(client, name: str, version: str) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while True:
        status = client.get_model_version(name, version).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(f"model version {name}/{version} is {status}")
        time.sleep(0.2)


def publish(folder: Path, url: str, name: str | None = None, alias: str | None = None,
            experiment: str = "ironbridge", serving_flavor: bool = True,
            check_sha256: bool = True) -> dict:
    """Logs, registers and (with `alias`) promotes one version folder."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    folder = folder.resolve()
    manifest, _, model_bytes = read_version(folder, check_sha256)
    name = name or manifest["name"]
    provenance = manifest.get("provenance", {})
    tags = {
        "ironbridge.version": ironbridge_version(),
        "ironbridge.model_name": manifest["name"],
        "ironbridge.model_version": manifest["version"],
        "ironbridge.sha256": manifest["sha256"],
        "ironbridge.training_data_sha256": str(provenance.get("training_data_sha256", "")),
        "ironbridge.code_commit": str(provenance.get("code_commit", "")),
    }
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"{manifest['name']} {manifest['version']}") as run:
        mlflow.set_tags(tags)
        for metric, spec in manifest.get("acceptance", {}).items():
            if isinstance(spec, dict) and isinstance(spec.get("value"), (int, float)):
                mlflow.log_metric(metric, float(spec["value"]))
        # Exactly the two files the gateway verifies, as they are on disk.
        mlflow.log_artifact(str(folder / "manifest.toml"), artifact_path=ARTIFACT_PATH)
        mlflow.log_artifact(str(folder / manifest["file"]), artifact_path=ARTIFACT_PATH)
        if serving_flavor:
            log_serving_model(model_bytes, manifest)
        source = mlflow.get_artifact_uri(ARTIFACT_PATH)
        run_id = run.info.run_id

    client = MlflowClient(tracking_uri=url)
    try:
        client.create_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    registered = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=manifest.get("description"))
    wait_ready(client, name, registered.version)
    if alias:
        client.set_registered_model_alias(name, alias, registered.version)
    return {"name": name, "version": registered.version, "source": source, "run_id": run_id}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a version folder (manifest.toml + model file)")
    parser.add_argument("--mlflow", required=True, help="MLflow tracking server URL")
    parser.add_argument("--name", help="registered model name (default: the manifest's name)")
    parser.add_argument("--alias", help="point this alias at the new version (e.g. champion)")
    parser.add_argument("--experiment", default="ironbridge")
    parser.add_argument("--no-serving-flavor", action="store_true",
                        help="skip the MLflow pytorch model under model/ (faster)")
    parser.add_argument("--unchecked", action="store_true",
                        help="publish even if the model file does not match the manifest's "
                             "sha256 (for tests of the gateway's refusal)")
    args = parser.parse_args()
    try:
        # MLflow prints "View run ..." links on stdout; stdout is the JSON.
        with contextlib.redirect_stdout(sys.stderr):
            published = publish(args.folder, args.mlflow, args.name, args.alias,
                                args.experiment, serving_flavor=not args.no_serving_flavor,
                                check_sha256=not args.unchecked)
    except (OSError, ValueError) as e:
        print(f"publish_to_mlflow: {e}", file=sys.stderr)
        return 1
    print(json.dumps(published))
    return 0


if __name__ == "__main__":
    sys.exit(main())
