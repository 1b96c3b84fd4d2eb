#!/usr/bin/env bash
# Build and install ferroloop (release), then run the demos on it.
source "$(dirname "$0")/_venv.sh"
"$VPY" -m pip install -q --disable-pip-version-check .
echo '== python -m ferroloop examples/coroutines.py'
time "$VPY" -m ferroloop examples/coroutines.py
echo
echo '== python -m ferroloop examples/concurrency_vs_parallelism.py'
"$VPY" -m ferroloop examples/concurrency_vs_parallelism.py
