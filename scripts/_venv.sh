# Sourced by the scripts here: creates .venv with the build and test tools and
# builds ferroloop into it (release mode), so a fresh machine needs only Rust and
# CPython with pip.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
# Another interpreter gets a virtualenv and a build directory of its own:
#   PYTHON=python3.12 VENV=.venv-3.12 bash scripts/test.sh
VENV="$(realpath -m "${VENV:-.venv}")"
if [ "$VENV" != "$ROOT/.venv" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/$(basename "$VENV")}"
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
export VIRTUAL_ENV="$VENV"  # where maturin develop installs
VPY="$VIRTUAL_ENV/bin/python"
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
"$VPY" -m pip install -q --disable-pip-version-check -r "$ROOT/scripts/requirements-dev.txt"
