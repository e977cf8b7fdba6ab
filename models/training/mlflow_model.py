"""Turns an IronBridge model version folder (manifest.toml + TorchScript file)
into an MLflow pytorch-flavour model that a serving engine (MLServer with
mlserver-mlflow) can load, for `backend = "remote"` (docs/remote-inference.md).

    python models/training/mlflow_model.py VERSION_DIR OUT_DIR

The model is saved with `serialization_format="pickle"` ("pt2" is refused for
ScriptModules) and with a signature inferred from rows at the middle of each
input's valid range: without a signature MLServer's MLflow runtime refuses
the request ("Input data should be pandas.DataFrame or numpy.ndarray").
The file's sha256 is checked against the manifest first, so the engine
serves exactly the bytes the gateway verifies.
"""

import argparse
import hashlib
import pathlib
import sys
import tomllib


def save_mlflow_pytorch(version_dir, out_dir):
    """Saves the TorchScript model of `version_dir` as an MLflow pytorch model
    at `out_dir` (which must not exist) and returns the manifest."""
    import mlflow.models
    import mlflow.pytorch
    import numpy as np
    import torch

    version_dir = pathlib.Path(version_dir)
    manifest = tomllib.loads((version_dir / "manifest.toml").read_text())
    model_file = version_dir / manifest["file"]
    data = model_file.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest["sha256"]:
        raise ValueError(
            f"{model_file} has sha256 {actual}, its manifest says {manifest['sha256']}"
        )
    module = torch.jit.load(str(model_file), map_location="cpu")
    module.eval()
    middle = [(i["min"] + i["max"]) / 2.0 for i in manifest["inputs"]]
    x = np.array([middle, middle], dtype=np.float32)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    signature = mlflow.models.infer_signature(x, y)
    mlflow.pytorch.save_model(
        module, str(out_dir), serialization_format="pickle", signature=signature
    )
    return manifest


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir")
    parser.add_argument("out_dir")
    args = parser.parse_args(argv)
    manifest = save_mlflow_pytorch(args.version_dir, args.out_dir)
    print(f"saved {manifest['name']} {manifest['version']} to {args.out_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
