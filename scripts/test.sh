#!/usr/bin/env bash
# The whole test suite: Rust unit tests of the core, our pytest suite (each case
# compared with the stdlib loop), and CPython's own test_asyncio run on ferroloop.
source "$(dirname "$0")/_venv.sh"
echo '== cargo test (ferroloop-core)'
cargo test -q -p ferroloop-core
echo '== build (release) into .venv'
"$VPY" -m maturin develop -q --release
echo '== pytest tests/'
"$VPY" -m pytest -q tests
echo '== conformance: CPython test_asyncio on ferroloop'
"$VPY" tests/conformance/run.py
