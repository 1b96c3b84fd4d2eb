#!/usr/bin/env bash
# The one command of the benchmark suite: makes bench/.venv (its own, so the test
# venv never gets uvloop/rloop), installs the peers and matplotlib, builds ferroloop
# (release) into it and the Rust load generator + ceiling server, then runs run.py
# with the arguments given. A peer that fails to install is written to
# bench/.venv/install-failures.txt and the run goes on: run.py reports it in the table.
#
#     bash bench/run.sh [--quick] [--rounds N] [--loops a,b] [--only SUBSTR] [--out DIR]
#     bash bench/run.sh --callgrind [callgrind.py options]   # instruction counts instead
#     BENCH_SKIP_SETUP=1 bash bench/run.sh ...   # reuse the venv and builds as they are
#     PYTHON=python3.13 BENCH_VENV=bench/.venv-3.13 bash bench/run.sh ...   # another
#         interpreter, with a venv and a cargo build directory of its own
set -euo pipefail
BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="$(realpath -m "${BENCH_VENV:-$BENCH/.venv}")"
if [ "$VENV" != "$BENCH/.venv" ]; then
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target/bench-$(basename "$VENV")}"
fi
VPY="$VENV/bin/python"
FAILS="$VENV/install-failures.txt"

if [ -z "${BENCH_SKIP_SETUP:-}" ]; then
    [ -x "$VPY" ] || "$PYTHON" -m venv "$VENV"
    "$VPY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    : >"$FAILS"
    # One package per pip call, so one that cannot install does not stop the others.
    for pkg in 'maturin>=1.7,<2' uvloop rloop matplotlib trustme; do
        log="$VENV/pip-${pkg%%[<>=]*}.log"
        if ! "$VPY" -m pip install -q --disable-pip-version-check "$pkg" >"$log" 2>&1; then
            echo "bench: could not install $pkg (see $log); the run goes on without it" >&2
            printf '%s\t%s\n' "${pkg%%[<>=]*}" "$(tail -n 1 "$log")" >>"$FAILS"
        fi
    done
    echo '== build ferroloop (release) into bench/.venv' >&2
    # Build output goes to stderr: stdout carries only the results table.
    VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VPY" -m maturin develop -q --release >&2
    echo '== build the load generator and ceiling server (cargo build --release -p ferroloop-bench)' >&2
    if ! cargo build -q --release -p ferroloop-bench >&2; then
        echo "bench: building ferroloop-bench failed (is bench/tools in the workspace?): run.py uses the" \
             "loadgen and echo-server it finds in \${BENCH_TOOLS_DIR:-target/release}, and reports every" \
             "network workload as unsupported if there are none" >&2
    fi
fi
if [ "${1:-}" = --callgrind ]; then
    shift
    exec "$VPY" "$BENCH/callgrind.py" "$@"
fi
exec "$VPY" "$BENCH/run.py" "$@"
