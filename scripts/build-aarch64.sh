#!/usr/bin/env bash
# Cross-compiles `ironbridge` and `ironbridge-sim` for aarch64 Linux (an
# edge box: Raspberry Pi 4/5, Jetson, any 64-bit ARM with glibc >= 2.28),
# on this x86_64 Debian 12 machine. Idempotent: a second run only rebuilds
# what changed.
#
#   - Debian: gcc/g++-aarch64-linux-gnu (the cross toolchain), and
#     qemu-user from bookworm-backports (to run the result here: Debian 12's
#     own qemu 7.2 does not emulate /proc/cpuinfo for aarch64, and
#     libtorch's CPU detection then crashes)
#   - rustup: the aarch64-unknown-linux-gnu standard library
#   - .aarch64/: libtorch for aarch64 from PyPI's torch wheel, the same
#     version as the x86_64 one (TORCH_VERSION below), and the two CUDA
#     runtime libraries its CPU library links against (libcudart,
#     libcupti), which PyPI's aarch64 wheel needs even for CPU inference
#
# Output:
#   target/aarch64-unknown-linux-gnu/release/{ironbridge,ironbridge-sim}
#   .aarch64/runtime/  the shared libraries to ship beside the binary
#                      (set LD_LIBRARY_PATH to it on the edge box)
#
# Run the result here: scripts/run-aarch64.sh ironbridge --version
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
log() { echo "[build-aarch64] $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

TORCH_VERSION=2.13.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
TARGET=aarch64-unknown-linux-gnu
cache="$root/.aarch64"

# Debian packages.
missing=()
for pkg in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# (`|| true`: on a fresh machine there is no qemu-aarch64 yet, and with
# pipefail its "command not found" would end the script here.)
qemu_major=$({ qemu-aarch64 --version 2>/dev/null || true; } | sed -n 's/^qemu-aarch64 version \([0-9]*\).*/\1/p')
if [ "${qemu_major:-0}" -lt 8 ]; then
  log "installing qemu-user from bookworm-backports (qemu >= 8 emulates aarch64's /proc/cpuinfo)"
  list=/etc/apt/sources.list.d/ironbridge-bookworm-backports.list
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | as_root tee "$list" >/dev/null
  fi
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-user >/dev/null
fi

rustup target list --installed | grep -qx "$TARGET" || {
  log "adding the Rust target $TARGET"
  rustup target add "$TARGET"
}

# libtorch for aarch64, from the wheels (pip picks nothing up for this
# machine: --platform names the target; each wheel's own platform tag).
stamp="$cache/.versions"
want="torch $TORCH_VERSION cudart $CUDART_VERSION cupti $CUPTI_VERSION"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -rf "$cache"
  mkdir -p "$cache/wheels"
  pip=("$root/.venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all:
       --python-version 3.11 --dest "$cache/wheels")
  log "downloading torch $TORCH_VERSION for aarch64 (about 430 MB)"
  "${pip[@]}" --platform manylinux_2_28_aarch64 "torch==$TORCH_VERSION"
  "${pip[@]}" --platform manylinux_2_17_aarch64 "nvidia-cuda-runtime==$CUDART_VERSION"
  "${pip[@]}" --platform manylinux_2_25_aarch64 "nvidia-cuda-cupti==$CUPTI_VERSION"
  log "unpacking libtorch"
  "$root/.venv/bin/python" - "$cache" <<'PY'
import pathlib, sys, zipfile
cache = pathlib.Path(sys.argv[1])
for wheel in (cache / "wheels").glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith(("torch/include/", "torch/lib/")) or (
                name.startswith("nvidia/") and ".so" in name
            ):
                z.extract(name, cache / "unpacked")
PY
  # The libtorch folder tch builds against: torch's headers and CPU
  # libraries, without the CUDA ones (tch would link libtorch_cuda, which
  # needs the whole CUDA stack), and a libtorch.so that, as in PyTorch's
  # CPU-only builds, only stands for libtorch_cpu.
  mkdir -p "$cache/libtorch/lib"
  ln -sfn "$cache/unpacked/torch/include" "$cache/libtorch/include"
  for lib in "$cache"/unpacked/torch/lib/*; do
    case "$(basename "$lib")" in
      libtorch_cuda* | libc10_cuda* | libcaffe2_nvrtc* | libtorch_nvshmem* | libtorch_python* | libtorch.so) ;;
      *) cp -a "$lib" "$cache/libtorch/lib/" ;;
    esac
  done
  cp "$cache"/unpacked/nvidia/cu13/lib/libcudart.so.13 "$cache"/unpacked/nvidia/cu13/lib/libcupti.so.13 "$cache/libtorch/lib/"
  aarch64-linux-gnu-gcc -shared -o "$cache/libtorch/lib/libtorch.so" \
    -Wl,--no-as-needed -L"$cache/libtorch/lib" -Wl,-rpath-link,"$cache/libtorch/lib" \
    -ltorch_cpu -x c /dev/null
  ln -sfn "$cache/libtorch/lib" "$cache/runtime"
  rm -rf "$cache/unpacked/torch/lib" "$cache/wheels"
  printf '%s' "$want" > "$stamp"
fi

log "building ironbridge and ironbridge-sim for $TARGET (release)"
export LIBTORCH="$cache/libtorch"
export LIBTORCH_CXX11_ABI=1
unset LD_LIBRARY_PATH LIBTORCH_USE_PYTORCH
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=-Wl,-rpath-link,$cache/libtorch/lib"
cargo build --release --locked --target "$TARGET" -p ironbridge --bin ironbridge
cargo build --release --locked --target "$TARGET" -p ironbridge-simulator --bin ironbridge-sim
log "done: target/$TARGET/release/ironbridge, ironbridge-sim; runtime libraries in .aarch64/runtime"
