"""Makes a worse version of a TorchScript model for the gate tests: the
model at SRC/model.pt with OFFSET added to every output, saved as
DST/model.pt, and DST/manifest.toml's sha256 set to the new file's.

Usage: offset_model.py SRC_VERSION_DIR DST_VERSION_DIR OFFSET
(DST must already hold the manifest, with its version set.)
"""

import hashlib
import io
import re
import sys

import torch


class Offset(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, offset: float) -> None:
        super().__init__()
        self.inner = inner
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.offset


def main() -> None:
    src, dst, offset = sys.argv[1], sys.argv[2], float(sys.argv[3])
    inner = torch.jit.load(f"{src}/model.pt")
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Offset(inner, offset).eval()), buf)
    data = buf.getvalue()
    with open(f"{dst}/model.pt", "wb") as f:
        f.write(data)
    with open(f"{dst}/manifest.toml") as f:
        manifest = f.read()
    manifest, n = re.subn(
        r'(?m)^sha256 = "[0-9a-f]+"', f'sha256 = "{hashlib.sha256(data).hexdigest()}"', manifest
    )
    if n != 1:
        sys.exit("no sha256 line in the manifest")
    with open(f"{dst}/manifest.toml", "w") as f:
        f.write(manifest)


if __name__ == "__main__":
    main()
