"""The loops the benchmarks compare, by name: each name maps to a factory returning a
fresh event loop. A loop that cannot be imported is not dropped: `probe` says why,
so the tables can show "unsupported: <reason>" in its column.

Kept free of anything but the standard library so every benchmark process (and
run.py) can import it before knowing which loops exist.
"""
import asyncio
import importlib
import importlib.metadata
import os
import platform

NAMES = ('ferroloop', 'asyncio', 'uvloop', 'rloop')
BASELINE = 'uvloop'  # every ratio in the tables is relative to this loop

# Written by run.sh: a package that failed to install, tab, the last line pip printed.
_INSTALL_FAILURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), '.venv', 'install-failures.txt')


class Unsupported(Exception):
    """The loop, or a feature a workload needs, is not available; the message says why."""


def factory(name):
    """A zero-argument callable making a new loop of that kind (raises Unsupported)."""
    if name == 'asyncio':
        return asyncio.new_event_loop
    if name not in NAMES:
        raise Unsupported(f'unknown loop {name!r} (known: {", ".join(NAMES)})')
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        reason = _install_failure(name)
        raise Unsupported(f'not installed ({reason or exc})') from None
    return module.new_event_loop


def version(name):
    """The loop's version string, or None when it is not installed."""
    if name == 'asyncio':
        return 'Python ' + platform.python_version()
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def probe(name):
    """(version, None) when the loop can be made here, else (None, reason)."""
    try:
        factory(name)().close()
    except Unsupported as exc:
        return None, str(exc)
    except Exception as exc:  # a loop that imports but cannot even start: still reported
        return None, f'{type(exc).__name__}: {exc}'
    return version(name), None


def _install_failure(name):
    try:
        with open(_INSTALL_FAILURES) as f:
            for line in f:
                pkg, _, why = line.rstrip('\n').partition('\t')
                if pkg == name:
                    return f'pip failed: {why}'
    except OSError:
        pass
    return None
