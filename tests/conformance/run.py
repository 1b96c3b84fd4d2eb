#!/usr/bin/env python3
"""Conformance: CPython's own ``test_asyncio`` (the copy shipped with the running
interpreter, ``test.test_asyncio.*``) run against ferroloop.

    python tests/conformance/run.py                  # everything, 2 modules at a time
    python tests/conformance/run.py --module test_tasks [--module test_locks] [-k PATTERN]
    python tests/conformance/run.py --update-known   # rewrite known_failures.txt
    python tests/conformance/run.py -j 1 -v          # one at a time, list every failure
    python tests/conformance/run.py --stdlib         # baseline: the same harness on asyncio's loop

Each module runs in its own process (``_child.py``, which installs ferroloop,
builds the ferroloop test classes and counts the loops created), with a per-test
watchdog and a per-module deadline: a hang is a reported result, never a stalled
run. A test that hangs or crashes the process is recorded and the module resumes
after it.

The run fails (exit 1) on any failure not listed in ``known_failures.txt``, and on
any listed test that passes now or no longer exists, so the list only shrinks. The
last line is ``conformance: N passed, M failed, K skipped``.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, '_child.py')
KNOWN_FAILURES = os.path.join(HERE, 'known_failures.txt')

# A test running longer than this is a hang (the slowest pass in under 3 s).
TEST_TIMEOUT = 30
# Backstop for everything outside tests, all attempts of one module together.
MODULE_TIMEOUT = 600
# Interpreter shutdown after the last test.
EXIT_TIMEOUT = 30
# Attempts per module (one more after each test that hangs or crashes).
MAX_ATTEMPTS = 10

# What is not run, with why. A key is a module, a class ("module.Class") or a test
# ("module.Class.test_x"). Everything else in test.test_asyncio runs on ferroloop.
_SELECTOR_CLASS = 'the stdlib selector loop; ferroloop runs the same mixin as {}'
EXCLUDED = {
    # ---- whole modules
    'test_selector_events': "BaseSelectorEventLoop and the selector transports, on mocked selectors and sockets",
    'test_proactor_events': "the Windows proactor loop and its transports, on mocks",
    'test_windows_events': "Windows only (IOCP proactor)",
    'test_windows_utils': "Windows only (asyncio.windows_utils)",

    # ---- test_base_events: BaseEventLoop's own internals; RunningLoopTests runs
    'test_base_events.BaseEventTests': "base_events._ipaddr_info, a private helper",
    'test_base_events.BaseEventLoopTests': _SELECTOR_CLASS.format('FerroloopBaseEventLoopTests'),
    'test_base_events.BaseEventLoopWithSelectorTests': _SELECTOR_CLASS.format('FerroloopBaseEventLoopWithSelectorTests'),
    'test_base_events.BaseLoopSockSendfileTests': "BaseSelectorEventLoop's sendfile fallback (constructs that loop explicitly)",
    'test_base_events.TestSelectorUtils': "base_events._set_nodelay, a private helper",

    # ---- test_base_events: single tests of BaseEventLoop internals in the classes
    # ---- ferroloop runs (FerroloopBaseEventLoopTests/...WithSelectorTests)
    'test_base_events.FerroloopBaseEventLoopTests.test__*': "private BaseEventLoop methods (_add_callback, _run_once) and _ready/_scheduled",
    'test_base_events.FerroloopBaseEventLoopTests.test_call_soon': "inspects BaseEventLoop._ready, and wants asyncio.Handle itself (ferroloop's Handle is its own type, as uvloop's)",
    'test_base_events.FerroloopBaseEventLoopTests.test_call_later': "inspects BaseEventLoop._scheduled, and wants asyncio.TimerHandle itself (ferroloop's is its own type)",
    'test_base_events.FerroloopBaseEventLoopTests.test_not_implemented': "BaseEventLoop's private transport factory hooks (_make_socket_transport...)",
    'test_base_events.FerroloopBaseEventLoopTests.test_run_forever_pre_stopped': "drives a mocked BaseEventLoop._selector",
    'test_base_events.FerroloopBaseEventLoopTests.test_custom_run_forever_integration': "3.13: calls _run_once with nothing ready, which returns only because BaseEventLoop._selector is mocked (a real poll blocks, as asyncio's does); tests/test_lifecycle.py tests the hooks",
    'test_base_events.FerroloopBaseEventLoopTests.test_single_selecter_event_callback_after_stopping': "drives a mocked BaseEventLoop._selector and _process_events",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_accept_connection_*': "BaseSelectorEventLoop's private _accept_connection",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_multiple_errors': "patches asyncio.base_events.socket (BaseEventLoop's create_connection code)",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_timeout': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_multiple_errors_local_addr': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_ipv6_scope': "patches asyncio.base_events.socket and the private _add_reader/_add_writer",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_ip_addr': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_no_inet_pton': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_service_name': "patches asyncio.base_events.socket and the private _add_reader/_add_writer",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_bluetooth': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_connection_ssl_server_hostname_default': "mocks the private BaseEventLoop._make_ssl_transport",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_server_nosoreuseport': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_server_soreuseport_only_defined': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_server_cant_bind': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_no_addrinfo': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_socket_err': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_setblk_err': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_cant_bind': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_nosoreuseport': "patches asyncio.base_events.socket",
    'test_base_events.FerroloopBaseEventLoopWithSelectorTests.test_create_datagram_endpoint_ip_addr': "patches asyncio.base_events.socket and the private _add_reader",

    # ---- test_events: the stdlib's own policy classes
    'test_events.PolicyTests': "asyncio's own AbstractEventLoopPolicy/DefaultEventLoopPolicy and the loops they make",

    # ---- single tests written against the stdlib loop's internals
    'test_events.FerroloopEventLoopTests.test_timeout_rounding': "counts calls of the private BaseEventLoop._run_once and reads _selector",
    'test_base_events.FerroloopBaseEventLoopTests.test_default_exc_handler_broken': "subclasses base_events.BaseEventLoop itself, so runs on the stdlib loop",
    'test_base_events.FerroloopBaseEventLoopTests.test_create_task': "subclasses base_events.BaseEventLoop itself, so runs on the stdlib loop",

    # ---- the stdlib's per-selector classes, replaced by ferroloop classes built from
    # ---- the same mixins (see ADAPTERS in _child.py)
    'test_events.SelectEventLoopTests': _SELECTOR_CLASS.format('FerroloopEventLoopTests'),
    'test_events.PollEventLoopTests': _SELECTOR_CLASS.format('FerroloopEventLoopTests'),
    'test_events.EPollEventLoopTests': _SELECTOR_CLASS.format('FerroloopEventLoopTests'),
    'test_events.KqueueEventLoopTests': _SELECTOR_CLASS.format('FerroloopEventLoopTests'),
    'test_sock_lowlevel.SelectEventLoopTests': _SELECTOR_CLASS.format('FerroloopSockTests'),
    'test_sock_lowlevel.PollEventLoopTests': _SELECTOR_CLASS.format('FerroloopSockTests'),
    'test_sock_lowlevel.EPollEventLoopTests': _SELECTOR_CLASS.format('FerroloopSockTests'),
    'test_sock_lowlevel.KqueueEventLoopTests': _SELECTOR_CLASS.format('FerroloopSockTests'),
    'test_sendfile.SelectEventLoopTests': _SELECTOR_CLASS.format('FerroloopSendfileTests'),
    'test_sendfile.PollEventLoopTests': _SELECTOR_CLASS.format('FerroloopSendfileTests'),
    'test_sendfile.EPollEventLoopTests': _SELECTOR_CLASS.format('FerroloopSendfileTests'),
    'test_sendfile.KqueueEventLoopTests': _SELECTOR_CLASS.format('FerroloopSendfileTests'),
    'test_server.SelectorStartServerTests': _SELECTOR_CLASS.format('FerroloopStartServerTests'),
    'test_server.ProactorStartServerTests': "Windows only (proactor loop)",
    'test_buffered_proto.BufferedProtocolSelectorTests': _SELECTOR_CLASS.format('FerroloopBufferedProtocolTests'),
    'test_buffered_proto.BufferedProtocolProactorTests': "Windows only (proactor loop)",
    'test_sslproto.SelectorStartTLSTests': _SELECTOR_CLASS.format('FerroloopStartTLSTests'),
    'test_sslproto.ProactorStartTLSTests': "Windows only (proactor loop)",
    'test_unix_events.SelectorEventLoopUnixSocketTests': _SELECTOR_CLASS.format('FerroloopUnixSocketTests'),

    # ---- test_subprocess: the stdlib's Unix child watchers
    # SubprocessMixin runs as FerroloopSubprocessTests (no watcher), and with the
    # Threaded/Safe/Pidfd/MultiLoop watcher classes too: ferroloop watches its children
    # itself (pidfd), so a watcher set on the policy changes nothing.
    'test_subprocess.SubprocessFastWatcherTests': "FastChildWatcher reaps every child with waitpid(-1), taking the exit status from ferroloop's pidfd watch (returncode 255) as it would from asyncio's own pidfd watcher",
    'test_subprocess.GenericWatcherTests': "asyncio's child-watcher protocol with a mocked watcher set on the policy (ferroloop's loops use no watcher)",
    'test_subprocess.SubprocessProactorTests': "Windows only (proactor loop)",

    # ---- test_unix_events: the stdlib's Unix loop, pipe transports and child watchers
    'test_unix_events.SelectorEventLoopSignalTests': "_UnixSelectorEventLoop's signal code with the signal module mocked",
    'test_unix_events.UnixReadPipeTransportTests': "the stdlib's _UnixReadPipeTransport on a mocked loop and pipe",
    'test_unix_events.UnixWritePipeTransportTests': "the stdlib's _UnixWritePipeTransport on a mocked loop and pipe",
    'test_unix_events.AbstractChildWatcherTests': "asyncio.AbstractChildWatcher's abstract methods; no loop",
    'test_unix_events.BaseChildWatcherTests': "unix_events.BaseChildWatcher's abstract methods; no loop",
    'test_unix_events.SafeChildWatcherTests': "asyncio.SafeChildWatcher with os.waitpid mocked; no real loop",
    'test_unix_events.FastChildWatcherTests': "asyncio.FastChildWatcher with os.waitpid mocked; no real loop",
    'test_unix_events.PolicyTests': "the stdlib Unix policy's child-watcher management",
    'test_unix_events.SelectorEventLoopUnixSockSendfileTests': "_UnixSelectorEventLoop's private _sock_sendfile_native(_impl) and _selector",
    'test_unix_events.FerroloopUnixSocketTests.test_create_unix_server_bind_error': "patches asyncio.unix_events.socket (the stdlib's create_unix_server code)",
}
if sys.version_info[:2] == (3, 12):
    # 3.12's copies of these count connections with the private
    # Server._attach()/_detach() of asyncio's Server, called without a transport
    # (3.13's open real connections, and pass).
    EXCLUDED['test_server.TestServer2.test_wait_closed_basic'] = "asyncio 3.12's private Server._attach() without a transport"
    EXCLUDED['test_server.TestServer2.test_wait_closed_race'] = "asyncio 3.12's private Server._attach() without a transport"

STATUS_PASS = ('pass', 'xfail')
STATUS_FAIL = ('fail', 'error', 'xpass', 'timeout', 'crash')


# ----- known failures ------------------------------------------------------------------

def read_known(path=KNOWN_FAILURES):
    """Return (header lines, {id: reason}) of the known-failures file."""
    header, known = [], {}
    if not os.path.exists(path):
        return header, known
    with open(path) as f:
        for line in f:
            line = line.rstrip('\n')
            stripped = line.strip()
            if not stripped or stripped.startswith('#'):
                if not known:
                    header.append(line)
                continue
            test_id, _, reason = stripped.partition('#')
            known[test_id.strip()] = reason.strip()
    while header and not header[-1].strip():
        header.pop()
    return header, known


def write_known(header, known, path=KNOWN_FAILURES):
    ids = sorted(known, key=lambda i: (i.split('.')[0], i))
    width = max((len(i) for i in ids), default=0)
    with open(path, 'w') as f:
        for line in header:
            f.write(line + '\n')
        previous = None
        for test_id in ids:
            module = test_id.split('.')[0]
            if module != previous:
                f.write('\n')
                previous = module
            f.write(f'{test_id.ljust(width)}  # {known[test_id]}\n')


# ----- running one module --------------------------------------------------------------

class ModuleRun:
    def __init__(self, name):
        self.name = name
        self.tests = {}      # id -> end event (status, detail, loops...)
        self.loops = {'ferroloop': 0, 'stdlib': 0}
        self.complete = False  # every test of the module ran (no deadline, crash loop or -k)
        self.attempts = 0
        self.seconds = 0.0


def tail(path, lines=40):
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def run_module(name, workdir, args):
    run = ModuleRun(name)
    exclude = sorted(k for k in EXCLUDED if k != name and k.split('.')[0] == name)
    start = time.monotonic()
    deadline = start + args.module_timeout
    cwd = os.path.join(workdir, name)
    os.makedirs(cwd, exist_ok=True)
    while True:
        run.attempts += 1
        n = run.attempts
        paths = {k: os.path.join(workdir, f'{name}.{n}.{k}') for k in ('job', 'results', 'watchdog', 'log')}
        job = {
            'module': name, 'results': paths['results'], 'watchdog': paths['watchdog'],
            'test_timeout': args.test_timeout, 'exit_timeout': EXIT_TIMEOUT,
            'exclude': exclude, 'skip': sorted(run.tests), 'pattern': args.k, 'baseline': args.stdlib,
        }
        with open(paths['job'], 'w') as f:
            json.dump(job, f)
        with open(paths['log'], 'w') as log:
            proc = subprocess.Popen([sys.executable, CHILD, '--job', paths['job']], cwd=cwd,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                deadline_hit = False
            except subprocess.TimeoutExpired:
                deadline_hit = True
                kill_group(proc)
        # The child's own subprocesses (subprocess tests) live in its session.
        kill_group(proc, only_leftovers=True)

        open_test, done, attempt_loops = None, False, None
        for event in read_events(paths['results']):
            if event['event'] == 'start':
                open_test = event['id']
            elif event['event'] == 'end':
                run.tests[event['id']] = event
                if event['id'] == open_test:
                    open_test = None
                attempt_loops = event.get('total', attempt_loops)
            elif event['event'] == 'done':
                done = True
                attempt_loops = event['loops']
        for k, count in (attempt_loops or {}).items():
            run.loops[k] += count
        watchdog = tail(paths['watchdog'], 60)
        where = f'(attempt {n}; log {paths["log"]})'

        if deadline_hit:
            detail = (f'module deadline ({args.module_timeout}s) hit {where}; '
                      f'running: {open_test or "nothing (outside tests)"}\n{tail(paths["log"])}')
            run.tests[f'{name}.<timeout>'] = {'status': 'timeout', 'detail': detail}
            break
        if done:
            if proc.returncode != 0:
                what = 'hung at interpreter exit' if watchdog else f'exited with {proc.returncode} after the last test'
                run.tests[f'{name}.<exit>'] = {'status': 'crash', 'detail': f'{what} {where}\n{watchdog or tail(paths["log"])}'}
            run.complete = not args.k  # with -k, unseen tests were filtered out, not gone
            break
        if open_test is not None:
            status = 'timeout' if watchdog else 'crash'
            what = (f'hung (> {args.test_timeout}s)' if watchdog
                    else f'killed the process (exit {proc.returncode})')
            run.tests[open_test] = {'status': status, 'detail': f'{what} {where}\n{watchdog or tail(paths["log"])}',
                                    'ferroloop': 0, 'stdlib': 0}
            if run.attempts < MAX_ATTEMPTS:
                continue
            run.tests[f'{name}.<crash>'] = {'status': 'crash', 'detail': f'gave up after {n} attempts'}
            break
        run.tests[f'{name}.<crash>'] = {'status': 'crash',
                                        'detail': f'process ended outside any test, exit {proc.returncode} {where}\n'
                                                  f'{watchdog or tail(paths["log"])}'}
        break
    run.seconds = time.monotonic() - start
    return run


def read_events(path):
    events = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line cut short by a kill
    return events


def kill_group(proc, only_leftovers=False):
    """Kill the process group of a child we started (its session: the child and
    anything it spawned)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    if not only_leftovers:
        proc.wait()


# ----- classification and report ------------------------------------------------------

class Tally:
    def __init__(self):
        self.passed = self.failed = self.known = self.now_passing = self.skipped = 0
        self.stale = 0
        self.on_stdlib = 0     # tests that created a stdlib loop
        self.no_ferroloop = 0  # passed without creating a ferroloop loop
        self.unexpected = []   # (id, status, detail)
        self.newly_passing = []
        self.stale_ids = []


def classify(run, known):
    t = Tally()
    for test_id, ev in sorted(run.tests.items()):
        status = ev['status']
        listed = test_id in known
        if ev.get('stdlib'):
            t.on_stdlib += 1
        if status in STATUS_PASS and not ev.get('ferroloop'):
            t.no_ferroloop += 1
        if status in STATUS_PASS:
            t.passed += 1
            if listed:
                t.now_passing += 1
                t.newly_passing.append(test_id)
        elif status == 'skip':
            t.skipped += 1
        elif listed:
            t.known += 1
        else:
            t.failed += 1
            t.unexpected.append((test_id, status, ev.get('detail', '')))
    if run.complete:
        for test_id in known:
            if test_id.split('.')[0] == run.name and test_id not in run.tests:
                t.stale += 1
                t.stale_ids.append(test_id)
    return t


ROW = '{:<20} {:>6} {:>6} {:>6} {:>5} {:>6}  {:>9} {:>7}  {:>9} {:>9} {:>8}'
HEAD = ROW.format('module', 'passed', 'failed', 'known', 'skip', 'fixed',
                  'ferroloop', 'stdlib', 'tests on', 'passed w/o', 'seconds')
HEAD2 = ROW.format('', '', '', '', '', '', 'loops', 'loops', 'stdlib', 'ferroloop', '')


def row(name, t, loops, seconds):
    return ROW.format(name, t.passed, t.failed, t.known, t.skipped, t.now_passing + t.stale,
                      loops['ferroloop'], loops['stdlib'], t.on_stdlib, t.no_ferroloop, f'{seconds:.1f}')


def first_lines(text, n):
    lines = text.rstrip().splitlines()
    if len(lines) <= n:
        return '\n'.join(lines)
    return '\n'.join(lines[:n // 2] + ['    [...]'] + lines[-(n // 2):])


# The reason a new known failure gets when the loop method that raised
# NotImplementedError says it all (AbstractEventLoop's stub, in asyncio/events.py).
MISSING_FEATURE = {
    'create_connection': 'needs TCP transports (issue 3)',
    'create_server': 'needs TCP transports (issue 3)',
    'connect_accepted_socket': 'needs TCP transports (issue 3)',
    'create_unix_connection': 'needs Unix socket transports',
    'create_unix_server': 'needs Unix socket transports',
    'create_datagram_endpoint': 'needs UDP transports',
    'start_tls': 'needs TLS',
    'sendfile': 'needs loop.sendfile (transports)',
    'subprocess_exec': 'needs subprocesses',
    'subprocess_shell': 'needs subprocesses',
    'connect_read_pipe': 'needs pipe transports',
    'connect_write_pipe': 'needs pipe transports',
}
_EVENTS_FRAME = re.compile(r'asyncio[/\\]events\.py", line \d+, in (\w+)$')


def summary_reason(test_id, event):
    """A reason for a new known-failure entry: the missing feature when it is
    clear, else FIXME and the error's last line (to be edited by hand)."""
    detail = event.get('detail', '')
    if event['status'] in ('timeout', 'crash'):
        return f'FIXME: {"hangs" if event["status"] == "timeout" else "crashes the process"}'
    method = None
    for line in detail.splitlines():
        if line.startswith('  File "'):
            found = _EVENTS_FRAME.search(line)
            method = found.group(1) if found else None  # the innermost frame counts
        elif line.startswith('NotImplementedError') and method:
            break
        elif not line.startswith(' '):
            method = None  # a traceback ended without the stub raising
    if method and method.startswith('sock_'):
        return 'needs sock_* (in progress)'
    if method in MISSING_FEATURE:
        reason = MISSING_FEATURE[method]
        if ('ssl' in test_id.lower() or 'tls' in test_id.lower()) and 'TLS' not in reason:
            reason += ' and TLS'
        return reason
    last = ''
    for line in reversed(detail.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(('Stdout:', 'Stderr:', '^', '~')):
            last = line[:100]
            break
    return f'FIXME: {last}'


def discover_modules():
    import test.test_asyncio as pkg
    names = sorted(f[:-3] for f in os.listdir(os.path.dirname(pkg.__file__))
                   if f.startswith('test_') and f.endswith('.py'))
    return names, os.path.dirname(pkg.__file__)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--module', action='append', metavar='NAME',
                        help='run only this module (repeatable), e.g. test_tasks')
    parser.add_argument('-k', metavar='PATTERN', help='run only tests whose id contains PATTERN')
    parser.add_argument('-j', type=int, default=2, metavar='N', help='modules run in parallel (default 2)')
    parser.add_argument('--update-known', action='store_true',
                        help='rewrite known_failures.txt from this run (keeps existing reasons)')
    parser.add_argument('-v', '--verbose', action='store_true', help='full tracebacks, every failure')
    parser.add_argument('--test-timeout', type=float, default=TEST_TIMEOUT, help=f'seconds (default {TEST_TIMEOUT})')
    parser.add_argument('--module-timeout', type=float, default=MODULE_TIMEOUT, help=f'seconds (default {MODULE_TIMEOUT})')
    parser.add_argument('--keep-logs', action='store_true', help='keep the per-module logs and results')
    parser.add_argument('--stdlib', action='store_true',
                        help="baseline: the same harness on asyncio's own loop (known_failures.txt is ignored)")
    args = parser.parse_args(argv)

    try:
        import ferroloop  # noqa: F401  (fail early, clearly, if it is not built)
        all_modules, pkg_dir = discover_modules()
    except ImportError as exc:
        print(f'conformance: cannot run: {exc}', file=sys.stderr)
        print('conformance: 0 passed, 1 failed')
        return 1
    if sys.version_info[:2] != (3, 11):
        print(f'note: known_failures.txt was written against CPython 3.11; this is {sys.version.split()[0]}')

    if args.module:
        unknown = [m for m in args.module if m not in all_modules]
        if unknown:
            parser.error(f'no such module in {pkg_dir}: {", ".join(unknown)}')
        modules = list(dict.fromkeys(args.module))
    else:
        modules = [m for m in all_modules if m not in EXCLUDED]
    # Longest first, so the slowest module does not start last.
    modules.sort(key=lambda m: -os.path.getsize(os.path.join(pkg_dir, m + '.py')))

    header, known = read_known()
    if args.stdlib:
        if args.update_known:
            parser.error('--update-known does not go with --stdlib')
        known = {}
    workdir = tempfile.mkdtemp(prefix='ferroloop-conformance-')
    print(f'conformance: {len(modules)} modules of {pkg_dir}, -j {args.j}')
    started = time.monotonic()
    runs = {}
    lock = threading.Lock()

    def one(name):
        run = run_module(name, workdir, args)
        t = classify(run, known)
        with lock:
            flag = ' FAILED' if (t.failed or t.now_passing or t.stale) else ''
            print(f'  {name}: {t.passed} passed, {t.failed} failed, {t.known} known, '
                  f'{t.skipped} skipped; {run.loops["ferroloop"]} ferroloop loops, '
                  f'{run.loops["stdlib"]} stdlib loops; {run.seconds:.1f}s{flag}', flush=True)
        return run

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.j)) as pool:
        for run in pool.map(one, modules):
            runs[run.name] = run
    elapsed = time.monotonic() - started

    print()
    print(HEAD)
    print(HEAD2)
    total = Tally()
    total_loops = {'ferroloop': 0, 'stdlib': 0}
    tallies = {}
    for name in sorted(runs):
        run = runs[name]
        t = tallies[name] = classify(run, known)
        print(row(name, t, run.loops, run.seconds))
        for attr in ('passed', 'failed', 'known', 'skipped', 'now_passing', 'stale', 'on_stdlib', 'no_ferroloop'):
            setattr(total, attr, getattr(total, attr) + getattr(t, attr))
        for k in total_loops:
            total_loops[k] += run.loops[k]
    print(row('TOTAL', total, total_loops, elapsed))
    print('  fixed: listed in known_failures.txt but passing or gone now (fails the run: remove them)')
    print('  tests on stdlib: tests that created a stdlib loop (test_base_events.test_check_thread: a bystander BaseEventLoop)')
    print('  passed w/o ferroloop: passed tests that created no ferroloop loop (ABCs, mocks, stdlib loop)')
    zero = [n for n in sorted(runs) if runs[n].loops['ferroloop'] == 0
            and any(ev['status'] in STATUS_PASS for ev in runs[n].tests.values())]
    if zero:
        print(f'  modules that passed tests without creating a ferroloop loop: {", ".join(zero)}')

    failures = [(name, item) for name in sorted(tallies) for item in tallies[name].unexpected]
    if failures:
        print(f'\n== {len(failures)} unexpected failures')
        limit = None if args.verbose else 40
        for _, (test_id, status, detail) in failures[:limit]:
            print(f'\n-- {status.upper()}: {test_id}')
            print(detail.rstrip() if args.verbose else first_lines(detail, 30))
        if limit is not None and len(failures) > limit:
            print(f'\n... {len(failures) - limit} more (-v to show all)')
    newly = [i for name in sorted(tallies) for i in tallies[name].newly_passing]
    if newly:
        print(f'\n== {len(newly)} listed in known_failures.txt but passing now (remove them):')
        for test_id in newly:
            print(f'  {test_id}')
    stale = [i for name in sorted(tallies) for i in tallies[name].stale_ids]
    if not args.module and not args.k:
        # Entries for a module that is not run at all (renamed, gone, or excluded).
        orphans = sorted(i for i in known if i.split('.')[0] not in runs)
        stale += orphans
        total.stale += len(orphans)
    if stale:
        print(f'\n== {len(stale)} listed in known_failures.txt but not run any more (remove them):')
        for test_id in stale:
            print(f'  {test_id}')
    todo = [i for i, reason in known.items() if not reason or reason.startswith('FIXME')]
    if todo:
        print(f'\nnote: {len(todo)} known failures have no reason yet (FIXME) in known_failures.txt')

    if args.update_known:
        def keep(test_id):
            run = runs.get(test_id.split('.')[0])
            if run is None:
                return bool(args.module)  # a module not run this time; or gone
            return not run.complete and test_id not in run.tests  # not reached

        new_known = {i: r for i, r in known.items() if keep(i)}
        added = 0
        for name, run in runs.items():
            for test_id, ev in run.tests.items():
                if ev['status'] in STATUS_FAIL:
                    if test_id not in known:
                        added += 1
                    new_known[test_id] = known.get(test_id) or summary_reason(test_id, ev)
        write_known(header or DEFAULT_HEADER, new_known)
        print(f'\nknown_failures.txt rewritten: {len(new_known)} entries, {added} new'
              + (' (check their reasons; FIXME ones need one)' if added else ''))

    if not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f'\nlogs: {workdir}')
    bad = total.failed + total.now_passing + total.stale
    print(f'\nconformance: {total.passed} passed, {bad} failed, {total.skipped} skipped')
    return 1 if bad else 0


DEFAULT_HEADER = [
    '# Tests of CPython 3.11 test_asyncio known to fail on ferroloop, run by run.py.',
    '# One test id a line, then "# reason". A listed test that passes fails the run:',
    '# remove it. Module-level entries: <module>.<timeout> / .<crash> / .<exit>.',
]

if __name__ == '__main__':
    sys.exit(main())
