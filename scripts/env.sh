# Sourced by the project's scripts: points the build at the venv's libtorch
# (torch==2.13.0, the version tch 0.26 needs) and lets binaries find it at
# run time. Needs scripts/setup.sh to have run.
_ib_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VIRTUAL_ENV="$_ib_root/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
_ib_site=$("$VIRTUAL_ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LIBTORCH="$_ib_site/torch"
export LD_LIBRARY_PATH="$LIBTORCH/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _ib_root _ib_site
