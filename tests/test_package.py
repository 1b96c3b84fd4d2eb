"""The package surface: public names, class hierarchy, ferroloop.run / install /
EventLoopPolicy / asyncio.Runner, ``python -m ferroloop``, and no monkeypatching."""

import asyncio
import importlib.metadata
import os
import sys
import textwrap
import warnings

import pytest

import ferroloop
from conftest import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def restore_policy():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)
    asyncio.set_event_loop(None)


def test_public_names():
    assert set(ferroloop.__all__) == {'Loop', 'new_event_loop', 'run', 'install', 'EventLoopPolicy',
                                      '__version__'}
    for name in ferroloop.__all__:
        assert hasattr(ferroloop, name), name
    assert ferroloop.__version__ == importlib.metadata.version('ferroloop')


def test_class_hierarchy():
    loop = ferroloop.new_event_loop()
    try:
        assert type(loop) is ferroloop.Loop
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert not isinstance(loop, asyncio.BaseEventLoop)
        assert not isinstance(loop, asyncio.SelectorEventLoop)
    finally:
        loop.close()


CORE_METHODS = [
    'run_forever', 'run_until_complete', 'stop', 'is_running', 'is_closed', 'close',
    'shutdown_asyncgens', 'shutdown_default_executor', 'call_soon', 'call_later', 'call_at',
    'time', 'create_future', 'create_task', 'call_soon_threadsafe', 'run_in_executor',
    'set_default_executor', 'getaddrinfo', 'getnameinfo', 'add_reader', 'remove_reader',
    'add_writer', 'remove_writer', 'add_signal_handler', 'remove_signal_handler',
    'set_task_factory', 'get_task_factory', 'get_exception_handler', 'set_exception_handler',
    'default_exception_handler', 'call_exception_handler', 'get_debug', 'set_debug',
]


@pytest.mark.parametrize('name', CORE_METHODS)
def test_core_methods_are_implemented(name):
    assert getattr(ferroloop.Loop, name) is not getattr(asyncio.AbstractEventLoop, name)


def test_run():
    async def main(x):
        loop = asyncio.get_running_loop()
        return type(loop), loop.get_debug(), x

    assert ferroloop.run(main(1)) == (ferroloop.Loop, False, 1)
    assert ferroloop.run(main(2), debug=True) == (ferroloop.Loop, True, 2)
    assert asyncio._get_running_loop() is None


def test_run_propagates_and_cleans_up():
    events = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append('agen closed')

    async def main():
        g = agen()
        await g.__anext__()
        main.gen = g
        await asyncio.get_running_loop().run_in_executor(None, int)
        raise LookupError('from main')

    with pytest.raises(LookupError, match='^from main$'):
        ferroloop.run(main())
    assert events == ['agen closed']  # shutdown_asyncgens ran


def test_run_errors_match_asyncio_run():
    async def inner():
        c = asyncio.sleep(0)
        try:
            ferroloop.run(c)
        finally:
            c.close()

    for runner in (asyncio.run, ferroloop.run):
        with pytest.raises(ValueError, match='^a coroutine was expected, got 1$'):
            runner(1)
    with pytest.raises(RuntimeError) as ferro_exc:
        ferroloop.run(inner())
    with pytest.raises(RuntimeError) as stdlib_exc:
        async def inner_stdlib():
            c = asyncio.sleep(0)
            try:
                asyncio.run(c)
            finally:
                c.close()
        asyncio.run(inner_stdlib())
    assert str(ferro_exc.value) == str(stdlib_exc.value) == \
        'asyncio.run() cannot be called from a running event loop'


@pytest.mark.skipif(not hasattr(asyncio, 'Runner'), reason='asyncio.Runner is new in 3.11')
def test_runner_with_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop.Loop
        assert runner.run(main()) is ferroloop.Loop
        loop = runner.get_loop()
    assert loop.is_closed()


def test_install_makes_new_event_loop_ferroloop(restore_policy):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # 3.12+
        ferroloop.install()
    assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)
    loop = asyncio.new_event_loop()
    try:
        assert type(loop) is ferroloop.Loop
    finally:
        loop.close()

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is ferroloop.Loop


def test_event_loop_policy(restore_policy):
    policy = ferroloop.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert type(loop) is ferroloop.Loop
    finally:
        loop.close()
    assert repr(policy) == '<ferroloop.EventLoopPolicy>'


@pytest.mark.skipif(not hasattr(asyncio, 'set_child_watcher') or sys.platform == 'win32',
                    reason='asyncio has child watchers on Unix before 3.14')
@pytest.mark.parametrize('policy_kind', ['asyncio', 'ferroloop'])
def test_child_watcher_setup_and_teardown_like_test_events(restore_policy, policy_kind):
    # Regression: test_events.GetEventLoopTestsMixin.setUp patches asyncio.events'
    # running-loop functions, then calls asyncio.set_child_watcher(). ferroloop's
    # policy raised NotImplementedError there, so tearDown never restored the patched
    # functions and every later gather() in the process found no running loop
    # ("got Future attached to a different loop"). The policy stores child watchers
    # as asyncio's Unix default policy does.
    policy = (asyncio.DefaultEventLoopPolicy() if policy_kind == 'asyncio'
              else ferroloop.EventLoopPolicy())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # watchers: 3.12+
        asyncio.set_event_loop_policy(policy)
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            watcher = asyncio.SafeChildWatcher()
            watcher.attach_loop(loop)
            asyncio.set_child_watcher(watcher)
            assert asyncio.get_child_watcher() is watcher

            async def main():
                return await asyncio.gather(asyncio.sleep(0, 'a'), asyncio.sleep(0, 'b'))
            assert loop.run_until_complete(main()) == ['a', 'b']

            asyncio.set_child_watcher(None)
            assert watcher._loop is None  # closed: detached from the loop
            default = asyncio.get_child_watcher()  # made on demand, as asyncio does
            assert isinstance(default, asyncio.AbstractChildWatcher)
            asyncio.set_child_watcher(None)
        finally:
            loop.close()
            asyncio.set_event_loop(None)


def test_import_does_not_monkeypatch():
    code = textwrap.dedent('''
        import asyncio, socket, signal, selectors, sys, types, concurrent.futures
        policy = asyncio.get_event_loop_policy()
        mods = [m for name, m in sorted(sys.modules.items())
                if name == 'asyncio' or name.startswith('asyncio.')]
        mods += [socket, signal, selectors, concurrent.futures]
        before = {m.__name__: dict(vars(m)) for m in mods}
        hooks = sys.get_asyncgen_hooks()
        import ferroloop
        changed = []
        for m in mods:
            now = vars(m)
            for key, value in before[m.__name__].items():
                if now.get(key) is not value:
                    changed.append(f'{m.__name__}.{key}')
            for key in set(now) - set(before[m.__name__]):
                if not isinstance(now[key], types.ModuleType):
                    changed.append(f'{m.__name__}.{key} (new)')
        assert asyncio.get_event_loop_policy() is policy, 'policy changed'
        assert type(policy).__module__.startswith('asyncio'), policy
        assert sys.get_asyncgen_hooks() == hooks
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.set_wakeup_fd(-1) == -1
        print(changed)
    ''')
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '[]'


# ----- python -m ferroloop ------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    import asyncio, sys
    import helper_module
    print('argv', sys.argv[1:])
    print('argv0', sys.argv[0].endswith('script.py'))
    print('name', __name__)
    print('helper', helper_module.VALUE)

    async def main():
        return type(asyncio.get_running_loop()).__module__.split('.')[0]

    if __name__ == '__main__':
        print('loop', asyncio.run(main()))
        loop = asyncio.new_event_loop()
        print('new_event_loop', type(loop).__module__.split('.')[0])
        loop.close()
        action = sys.argv[1] if len(sys.argv) > 1 else ''
        if action == 'exit3':
            sys.exit(3)
        if action == 'raise':
            raise KeyError('uncaught')
        if action == 'exitmsg':
            sys.exit('bye')
''')


@pytest.fixture
def script_dir(tmp_path):
    (tmp_path / 'script.py').write_text(SCRIPT)
    (tmp_path / 'helper_module.py').write_text('VALUE = 42\n')
    return tmp_path


def run_both(script_dir, *args):
    """Run the script with ``python -m ferroloop`` and with plain ``python``, from an
    unrelated working directory."""
    script = str(script_dir / 'script.py')
    ferro = run_python(['-m', 'ferroloop', script, *args], cwd=ROOT)
    plain = run_python([script, *args], cwd=ROOT)
    return ferro, plain


def without_loop_lines(text):
    return [line for line in text.splitlines() if not line.startswith(('loop ', 'new_event_loop '))]


@pytest.mark.parametrize('args,rc', [(['a', 'b'], 0), (['exit3'], 3), (['raise', 'x'], 1), (['exitmsg'], 1)])
def test_dash_m_ferroloop_runs_script_like_python(script_dir, args, rc):
    ferro, plain = run_both(script_dir, *args)
    assert plain.returncode == rc, plain.stderr
    assert ferro.returncode == rc, ferro.stderr
    assert without_loop_lines(ferro.stdout) == without_loop_lines(plain.stdout)
    assert f"argv {args!r}" in ferro.stdout
    assert 'name __main__' in ferro.stdout
    assert 'helper 42' in ferro.stdout
    assert 'loop ferroloop' in ferro.stdout and 'new_event_loop ferroloop' in ferro.stdout
    assert 'loop asyncio' in plain.stdout
    if args[0] == 'raise':
        assert ferro.stderr.strip().splitlines()[-1] == "KeyError: 'uncaught'"
        assert 'Traceback (most recent call last):' in ferro.stderr
        assert ferro.stderr.strip().splitlines()[-1] == plain.stderr.strip().splitlines()[-1]
    if args[0] == 'exitmsg':
        assert ferro.stderr.strip() == plain.stderr.strip() == 'bye'


def test_dash_m_ferroloop_module(script_dir):
    proc = run_python(['-m', 'ferroloop', '-m', 'script', 'x'], cwd=str(script_dir))
    assert proc.returncode == 0, proc.stderr
    assert "argv ['x']" in proc.stdout and 'loop ferroloop' in proc.stdout


def test_dash_m_ferroloop_usage():
    proc = run_python(['-m', 'ferroloop'])
    assert proc.returncode == 2
    assert proc.stderr.startswith('usage: python -m ferroloop')
    proc = run_python(['-m', 'ferroloop', '--help'])
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: python -m ferroloop')


def test_dash_m_ferroloop_missing_script(tmp_path):
    missing = str(tmp_path / 'missing.py')
    ferro = run_python(['-m', 'ferroloop', missing])
    plain = run_python([missing])
    assert ferro.returncode != 0 and plain.returncode != 0
    assert 'missing.py' in ferro.stderr
