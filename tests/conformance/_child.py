"""The in-process half of the conformance runner: runs ONE module of CPython's
``test.test_asyncio`` with ferroloop as the event loop. ``run.py`` starts it, once
per module, in its own process; it is not meant to be run by hand.

What it does, in order:

1. installs ``ferroloop.EventLoopPolicy`` for the whole process, and keeps it
   installed when a test resets the policy with ``set_event_loop_policy(None)``
   (every module's ``tearDownModule`` does);
2. counts the loops created: ferroloop's and the stdlib's (``BaseEventLoop``), per
   test and for the module, so a module that "passes" without running ferroloop
   shows it;
3. imports the module and applies its adapter (``ADAPTERS``): builds ferroloop test
   classes from the stdlib's implementation-agnostic mixins, the way the stdlib
   builds its per-selector classes, or points a base class's loop hook at
   ferroloop;
4. runs the tests (minus the excluded names and the ids already done by an
   earlier attempt), writing one JSON line per event to the results file.

A per-test watchdog (``faulthandler.dump_traceback_later(exit=True)``) ends the
process if one test hangs; ``run.py`` then records that test as a timeout and
starts the module again after it.
"""

import argparse
import faulthandler
import fnmatch
import gc
import importlib
import json
import signal
import sys
import time
import traceback
import unittest
import warnings

PREFIX = 'test.test_asyncio.'


def short_id(test_id):
    """'test.test_asyncio.test_events.C.test_x' -> 'test_events.C.test_x'."""
    return test_id[len(PREFIX):] if test_id.startswith(PREFIX) else test_id


# ----- the ferroloop policy and the loop counters --------------------------------------

LOOPS = {'ferroloop': 0, 'stdlib': 0}
BASELINE = False  # run.py --stdlib: the same harness on asyncio's own loop


def install_ferroloop():
    import asyncio
    from asyncio import base_events, events

    import ferroloop

    def count(cls, key):
        original = cls.__init__

        def __init__(self, *args, **kwargs):
            LOOPS[key] += 1
            original(self, *args, **kwargs)

        cls.__init__ = __init__

    count(ferroloop.Loop, 'ferroloop')
    count(base_events.BaseEventLoop, 'stdlib')
    if BASELINE:
        return

    # Tests (and every tearDownModule) reset the policy with
    # set_event_loop_policy(None); the default that comes back lazily must be
    # ferroloop's again, not the stdlib's.
    def _init_event_loop_policy():
        with events._lock:
            if events._event_loop_policy is None:
                events._event_loop_policy = ferroloop.EventLoopPolicy()

    events._init_event_loop_policy = _init_event_loop_policy
    asyncio.set_event_loop_policy(ferroloop.EventLoopPolicy())


def ensure_ferroloop_policy():
    """Before each test: a test that installs another policy and leaves it
    (test_events.PolicyTests does) must not turn the next tests to the stdlib."""
    if BASELINE:
        return
    from asyncio import events

    import ferroloop
    if not isinstance(events._event_loop_policy, (ferroloop.EventLoopPolicy, type(None))):
        events._event_loop_policy = ferroloop.EventLoopPolicy()


# ----- adapters: ferroloop test classes from the stdlib's mixins -----------------------
#
# Each adapter gets the imported module and returns {name: class} to add to it.
# The per-selector/per-proactor classes the stdlib builds from the same mixins are
# excluded in run.py (EXCLUDED), with the reason.

def _new_loop(self=None):
    if BASELINE:
        import asyncio
        return asyncio.DefaultEventLoopPolicy().new_event_loop()
    import ferroloop
    return ferroloop.new_event_loop()


def _make(module, name, bases, **attrs):
    cls = type(name, bases, dict(attrs, __module__=module.__name__, __qualname__=name))
    return {name: cls}


def adapt_events(m):
    # EventLoopTestsMixin is the stdlib's per-loop suite. The stdlib's Unix
    # classes add UnixEventLoopTestsMixin, which only wires asyncio's own child
    # watcher into the policy for the stdlib's subprocess implementation, which
    # ferroloop does not use.
    from test.test_asyncio import utils as test_utils

    def create_event_loop(self):
        loop = _new_loop()
        if not BASELINE:
            # test_prompt_cancellation ends with the selector loop's private
            # cleanup of the socket it read from: the same with public API.
            loop._stop_serving = lambda sock: (loop.remove_reader(sock), sock.close())
        return loop

    return _make(m, 'FerroloopEventLoopTests',
                 (m.EventLoopTestsMixin, m.SubprocessTestsMixin, test_utils.TestCase),
                 create_event_loop=create_event_loop)


def adapt_sock_lowlevel(m):
    from test.test_asyncio import utils as test_utils
    return _make(m, 'FerroloopSockTests', (m.BaseSockTestsMixin, test_utils.TestCase),
                 create_event_loop=_new_loop)


def adapt_sendfile(m):
    from test.test_asyncio import utils as test_utils
    return _make(m, 'FerroloopSendfileTests', (m.SendfileTestsBase, test_utils.TestCase),
                 create_event_loop=_new_loop)


def adapt_server(m):
    # The selector class adds a Unix-socket test to BaseStartServer's; both apply
    # to ferroloop, so subclass it and change only the loop.
    return _make(m, 'FerroloopStartServerTests', (m.SelectorStartServerTests,), new_loop=_new_loop)


def adapt_buffered_proto(m):
    return _make(m, 'FerroloopBufferedProtocolTests',
                 (m.BaseTestBufferedProtocol, unittest.TestCase), new_loop=_new_loop)


def adapt_sslproto(m):
    return _make(m, 'FerroloopStartTLSTests', (m.BaseStartTLS, unittest.TestCase),
                 new_loop=_new_loop)


def adapt_subprocess(m):
    # SubprocessMixin is loop-agnostic; the stdlib's Unix classes add a child
    # watcher per test (SubprocessWatcherMixin), its Windows class a proactor loop.
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = _new_loop()
        self.set_event_loop(self.loop)

    return _make(m, 'FerroloopSubprocessTests', (m.SubprocessMixin, test_utils.TestCase),
                 setUp=setUp)


def adapt_unix_events(m):
    # SelectorEventLoopUnixSocketTests checks create_unix_server/connection on a
    # loop its setUp makes; that setUp is the hook. The module's other classes
    # test the stdlib's own Unix loop, pipe transports and child watchers.
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = _new_loop()
        self.set_event_loop(self.loop)

    return _make(m, 'FerroloopUnixSocketTests', (m.SelectorEventLoopUnixSocketTests,),
                 setUp=setUp)


def adapt_base_events(m):
    # BaseEventLoopTests (a BaseEventLoop with a mocked selector) and
    # BaseEventLoopWithSelectorTests (a SelectorEventLoop) hold most of asyncio's
    # tests of call_soon/call_later, the exception handler and debug mode; their
    # setUp is the hook. Their tests of BaseEventLoop internals are excluded in
    # run.py one by one.
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = _new_loop()
        self.set_event_loop(self.loop)

    classes = {}
    classes.update(_make(m, 'FerroloopBaseEventLoopTests', (m.BaseEventLoopTests,), setUp=setUp))
    classes.update(_make(m, 'FerroloopBaseEventLoopWithSelectorTests',
                         (m.BaseEventLoopWithSelectorTests,), setUp=setUp))
    return classes


def adapt_tasks(m):
    # Three places read or step the stdlib loop's internals; the same with
    # ferroloop's API (``_ready_count()`` is ``len(loop._ready)``):
    # * GatherTestsBase._run_loop drains the ready queue
    #   ("while loop._ready: run_briefly(loop)");
    # * test_log_destroyed_pending_task steps the loop with ``_run_once()`` (which
    #   ferroloop has) and checks ``len(loop._ready) == 0``;
    # * test_issue46672 mocks ``BaseEventLoop.call_exception_handler`` on the class
    #   and asserts the loop never called it: mock ferroloop's method as well.
    if BASELINE:
        return {}
    from unittest import mock

    from test.test_asyncio import utils as test_utils

    def _run_loop(self, loop):
        while loop._ready_count():
            test_utils.run_briefly(loop)

    m.GatherTestsBase._run_loop = _run_loop

    class ReadyQueueLength:
        def __init__(self, loop):
            self._loop = loop

        def __len__(self):
            return self._loop._ready_count()

    log_destroyed_pending_task = m.BaseTaskTests.test_log_destroyed_pending_task

    def test_log_destroyed_pending_task(self):
        loop = self.loop
        loop._ready = ReadyQueueLength(loop)
        log_destroyed_pending_task(self)

    m.BaseTaskTests.test_log_destroyed_pending_task = test_log_destroyed_pending_task

    issue46672 = m.CoroutineGatherTests.test_issue46672

    def test_issue46672(self):
        with mock.patch.object(type(self.one_loop), 'call_exception_handler'):
            issue46672(self)

    m.CoroutineGatherTests.test_issue46672 = test_issue46672
    return {}


def adapt_runners(m):
    # BaseTest.new_loop is the hook: the stdlib gives it a BaseEventLoop with a
    # mocked selector, recording that shutdown_asyncgens() ran (tearDown checks).
    def new_loop(self):
        loop = _new_loop()
        loop.shutdown_ag_run = False
        shutdown_asyncgens = loop.shutdown_asyncgens

        async def recording_shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await shutdown_asyncgens()

        loop.shutdown_asyncgens = recording_shutdown_asyncgens
        return loop

    m.BaseTest.new_loop = new_loop
    return {}


def adapt_pep492(m):
    # BaseTest.setUp is the hook: the stdlib gives it a BaseEventLoop with a
    # mocked selector.
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = _new_loop()
        self.set_event_loop(self.loop)

    m.BaseTest.setUp = setUp
    return {}


ADAPTERS = {
    'test_base_events': adapt_base_events,
    'test_tasks': adapt_tasks,
    'test_events': adapt_events,
    'test_sock_lowlevel': adapt_sock_lowlevel,
    'test_sendfile': adapt_sendfile,
    'test_server': adapt_server,
    'test_buffered_proto': adapt_buffered_proto,
    'test_sslproto': adapt_sslproto,
    'test_subprocess': adapt_subprocess,
    'test_unix_events': adapt_unix_events,
    'test_runners': adapt_runners,
    'test_pep492': adapt_pep492,
}


def virtual_time_loop_class():
    """``test_utils.TestLoop``'s contract on a ferroloop loop, through ferroloop's
    virtual clock (``_enable_virtual_time``): ``time()`` starts at 0 and moves only
    when told; ``call_at``/``call_later`` record each deadline; after every loop
    iteration (``_after_virtual_iteration``, where TestLoop extends ``_run_once``)
    each recorded deadline is sent into the test's generator ``gen`` and the clock
    advances by what it yields; the poll never sleeps; ``close()`` checks that
    ``gen`` finished. TestLoop's fake selector and fd bookkeeping (``readers``,
    ``assert_reader``...) are not reproduced: the tests that pass a generator use
    none of it, and fds stay real (ferroloop's poller, with a zero timeout)."""
    import ferroloop

    class VirtualTimeTestLoop(ferroloop.Loop):
        def __new__(cls, gen=None):
            return super().__new__(cls)

        def __init__(self, gen=None):
            super().__init__()
            if gen is None:
                def gen():
                    yield
                self._check_on_close = False
            else:
                self._check_on_close = True
            self._gen = gen()
            next(self._gen)
            self._timers = []
            self._enable_virtual_time(0.0)

        def advance_time(self, advance):
            """Move test time forward."""
            if advance:
                self._advance_time(advance)

        def close(self):
            super().close()
            if self._check_on_close:
                try:
                    self._gen.send(0)
                except StopIteration:
                    pass
                else:  # pragma: no cover
                    raise AssertionError("Time generator is not finished")

        def call_at(self, when, callback, *args, context=None):
            self._timers.append(when)
            return super().call_at(when, callback, *args, context=context)

        def call_later(self, delay, callback, *args, context=None):
            # BaseEventLoop.call_later goes through call_at, so TestLoop records
            # call_later deadlines too.
            if delay is None:
                raise TypeError('delay must not be None')
            return self.call_at(self.time() + delay, callback, *args, context=context)

        def _after_virtual_iteration(self):
            for when in self._timers:
                advance = self._gen.send(when)
                self.advance_time(advance)
            self._timers = []

    VirtualTimeTestLoop.__module__ = __name__
    return VirtualTimeTestLoop


def patch_test_utils():
    """``test_utils.TestCase.new_test_loop()`` is the stdlib's way to say "a loop"
    in test_tasks/test_futures: give ferroloop. With a time generator it is the
    stdlib's virtual-time ``TestLoop`` (built on BaseEventLoop internals); ferroloop
    gives the same contract with its virtual clock (``virtual_time_loop_class``)."""
    from test.test_asyncio import utils as test_utils
    original = test_utils.TestCase.new_test_loop

    def new_test_loop(self, gen=None):
        if BASELINE:
            return original(self, gen)
        if gen is not None:
            loop = virtual_time_loop_class()(gen)
        else:
            loop = _new_loop()
        self.set_event_loop(loop)
        return loop

    test_utils.TestCase.new_test_loop = new_test_loop


# ----- running and reporting ---------------------------------------------------------

def collect_garbage_of_failed_test():
    """A test that fails half-way skips its own cleanup (``writer.close()``,
    ``pipe.close()``...): its transports, sockets and files are left in reference
    cycles with the traceback's frames. Collected later, they would warn inside
    whichever test next runs ``gc.collect()`` under ``assertWarns(ResourceWarning)``
    (test_streams' test_unclosed_resource_warnings after the known failures
    test_start_tls and test_read_all_from_pipe_reader), a failure that is not that
    test's. So the garbage of a failed test is collected at its end, and what it
    warns is reported with that test's failure. Passing tests are left alone: their
    garbage is theirs to answer for wherever it is collected, as under regrtest."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', ResourceWarning)
        gc.collect()
    lines = [f'  {w.category.__name__}: {w.message}' for w in caught]
    if not lines:
        return ''
    return '\nWarnings from collecting the garbage of this failed test:\n' + '\n'.join(lines) + '\n'


class JsonLinesResult(unittest.TestResult):
    """Writes ``start`` and ``end`` events, one JSON object a line, flushed at once
    so the parent has every finished test even if the process dies."""

    SEVERITY = {'pass': 0, 'skip': 1, 'xfail': 0, 'fail': 3, 'error': 3, 'xpass': 3}

    def __init__(self, out, test_timeout, watchdog_file):
        super().__init__()
        self.buffer = True  # a failure's report carries the test's output
        self.out = out
        self.test_timeout = test_timeout
        self.watchdog_file = watchdog_file
        self.current = None

    def emit(self, **event):
        self.out.write(json.dumps(event) + '\n')
        self.out.flush()

    def startTest(self, test):
        ensure_ferroloop_policy()
        super().startTest(test)
        self.current = {'status': None, 'detail': '', 'loops0': dict(LOOPS), 't0': time.monotonic()}
        self.emit(event='start', id=short_id(test.id()))
        if self.test_timeout:
            faulthandler.dump_traceback_later(self.test_timeout, exit=True, file=self.watchdog_file)

    def stopTest(self, test):
        if self.test_timeout:
            faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        cur, self.current = self.current, None
        status = cur['status'] or 'pass'
        if status in ('fail', 'error'):
            cur['detail'] += collect_garbage_of_failed_test()
        self.emit(event='end', id=short_id(test.id()), status=status, detail=cur['detail'],
                  ferroloop=LOOPS['ferroloop'] - cur['loops0']['ferroloop'],
                  stdlib=LOOPS['stdlib'] - cur['loops0']['stdlib'],
                  seconds=round(time.monotonic() - cur['t0'], 3), total=LOOPS)

    def _record(self, test, status, detail=''):
        if self.current is None or isinstance(test, unittest.suite._ErrorHolder):
            # An error outside any test: setUpClass, tearDownModule...
            self.emit(event='end', id=holder_id(test), status=status, detail=detail,
                      ferroloop=0, stdlib=0, seconds=0, total=LOOPS)
            return
        cur = self.current
        if cur['status'] is None or self.SEVERITY[status] > self.SEVERITY[cur['status']]:
            cur['status'] = status
        if detail:
            cur['detail'] += detail

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, 'pass')

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, 'error', self.errors[-1][1])

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, 'fail', self.failures[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, 'skip', reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, 'xfail')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, 'xpass', 'unexpected success')

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            kind = 'fail' if failed else 'error'
            text = (self.failures if failed else self.errors)[-1][1]
            self._record(test, kind, f'{subtest.id()}\n{text}')


def holder_id(holder):
    """'setUpClass (test.test_asyncio.test_x.C)' -> 'test_x.C.setUpClass'."""
    text = holder.id()
    if text.endswith(')') and ' (' in text:
        name, _, where = text[:-1].partition(' (')
        return f'{short_id(where)}.{name}'
    return short_id(text)


def iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def filter_suite(suite, keep):
    kept = unittest.TestSuite()
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            sub = filter_suite(item, keep)
            if sub.countTestCases():
                kept.addTest(sub)
        elif keep(item):
            kept.addTest(item)
    return kept


def restore_sigint():
    """A shell's background job starts Python with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler: test_runners' interrupt tests would wait
    forever. Give the child the handler a foreground run has."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main():
    restore_sigint()
    parser = argparse.ArgumentParser()
    parser.add_argument('--job', required=True, help='JSON job file written by run.py')
    job = json.load(open(parser.parse_args().job))

    name = job['module']
    out = open(job['results'], 'a')
    watchdog = open(job['watchdog'], 'w')
    result = JsonLinesResult(out, job['test_timeout'], watchdog)

    from test import support
    support.use_resources = []  # as regrtest without -u: no network, no cpu hogs
    global BASELINE
    BASELINE = job.get('baseline', False)
    install_ferroloop()
    patch_test_utils()
    try:
        module = importlib.import_module(PREFIX + name)
    except unittest.SkipTest as exc:
        result.emit(event='end', id=f'{name}.<import>', status='skip', detail=str(exc),
                    ferroloop=0, stdlib=0, seconds=0)
        result.emit(event='done', loops=LOOPS)
        return 0
    except Exception:
        result.emit(event='end', id=f'{name}.<import>', status='error',
                    detail=traceback.format_exc(), ferroloop=0, stdlib=0, seconds=0)
        result.emit(event='done', loops=LOOPS)
        return 0
    adapter = ADAPTERS.get(name)
    if adapter is not None:
        for cls_name, cls in adapter(module).items():
            setattr(module, cls_name, cls)

    loader = unittest.TestLoader()
    if job.get('pattern'):
        loader.testNamePatterns = [f'*{job["pattern"]}*']
    suite = loader.loadTestsFromModule(module)
    excluded = set(job['exclude'])
    done = set(job['skip'])

    def keep(test):
        tid = short_id(test.id())
        # excluded: a class ("test_x.Class"), a test ("test_x.Class.test_y"), or a
        # glob over test ids ("test_x.*.test_y")
        class_id = '.'.join(tid.split('.')[:2])
        if class_id in excluded or tid in excluded:
            return False
        if any(fnmatch.fnmatchcase(tid, pat) for pat in excluded if '*' in pat):
            return False
        return tid not in done

    suite = filter_suite(suite, keep)
    result.emit(event='planned', count=suite.countTestCases())
    suite.run(result)
    result.emit(event='done', loops=LOOPS)
    out.close()
    # Interpreter shutdown (atexit, thread joins, finalizers) must not hang either.
    faulthandler.dump_traceback_later(job['exit_timeout'], exit=True, file=watchdog)
    return 0


if __name__ == '__main__':
    sys.exit(main())
