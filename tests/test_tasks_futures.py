"""create_future / create_task, task names and contexts, the task factory."""

import asyncio
import contextvars
import inspect
import socket
import sys

import pytest

VAR = contextvars.ContextVar('VAR', default='default')

# 3.14's create_task hands every keyword to the task factory, the name included;
# before, the name was set on the factory's task afterwards.
FACTORY_GETS_THE_NAME = 'name' not in inspect.signature(asyncio.BaseEventLoop.create_task).parameters


def test_create_future_is_the_c_future(loop):
    fut = loop.create_future()
    assert type(fut) is asyncio.Future
    import _asyncio
    assert type(fut) is _asyncio.Future
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_create_future_of_a_loop_that_is_not_the_running_one(loop, make_loop):
    other = make_loop()

    async def main():
        return other.create_future(), loop.create_future()

    theirs, ours = loop.run_until_complete(main())
    assert theirs.get_loop() is other
    assert ours.get_loop() is loop


def test_sock_recv_waits_on_the_loops_create_future(loop):
    """asyncio's sock_recv makes its future with self.create_future(), so a
    subclass's override sees every wait."""
    made = []

    class Counting(type(loop)):
        def create_future(self):
            made.append(True)
            return super().create_future()

    loop.close()
    counting = Counting()
    a, b = socket.socketpair()
    try:
        a.setblocking(False)

        async def main():
            counting.call_soon(b.send, b'x')
            return await counting.sock_recv(a, 10)

        assert counting.run_until_complete(main()) == b'x'
        assert made
    finally:
        counting.close()
        a.close()
        b.close()


def test_future_callbacks_run_on_the_loop_in_order(loop):
    fut = loop.create_future()
    out = []
    fut.add_done_callback(lambda f: out.append(('cb1', f.result())))
    fut.add_done_callback(lambda f: out.append(('cb2', f.result())))
    loop.call_soon(fut.set_result, 'r')
    loop.run_until_complete(fut)
    loop.run_until_complete(asyncio.sleep(0))
    assert out == [('cb1', 'r'), ('cb2', 'r')]


def test_future_done_callback_context(loop):
    fut = loop.create_future()
    ctx = contextvars.Context()
    ctx.run(VAR.set, 'cb ctx')
    seen = []
    fut.add_done_callback(lambda f: seen.append(VAR.get()), context=ctx)
    fut.set_result(None)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == ['cb ctx']


def test_create_task_is_the_c_task(loop):
    async def coro():
        return asyncio.current_task()

    task = loop.create_task(coro())
    assert type(task) is asyncio.Task
    import _asyncio
    assert type(task) is _asyncio.Task
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) is task
    assert task.done()


def test_create_task_name(loop):
    async def coro():
        pass

    t1 = loop.create_task(coro(), name='my task')
    t2 = loop.create_task(coro())
    t3 = loop.create_task(coro(), name=42)
    assert t1.get_name() == 'my task'
    assert t2.get_name().startswith('Task-')
    assert t3.get_name() == '42'
    loop.run_until_complete(asyncio.gather(t1, t2, t3))


def test_create_task_binding(loop):
    """The coroutine by keyword, `name` under a string made at run time (not the
    interned one), and the errors of wrong calls are the stdlib's."""
    async def coro():
        return 'done'

    by_keyword = loop.create_task(coro=coro())
    built_name = loop.create_task(coro(), **{''.join(['na', 'me']): 'built'})
    assert built_name.get_name() == 'built'
    assert loop.run_until_complete(asyncio.gather(by_keyword, built_name)) == ['done', 'done']
    with pytest.raises(TypeError, match=r"create_task\(\) missing 1 required positional argument: 'coro'"):
        loop.create_task()
    with pytest.raises(TypeError, match=r'create_task\(\) takes 2 positional arguments but 3 were given'):
        loop.create_task(None, 'name')
    with pytest.raises(TypeError, match='a coroutine was expected'):
        loop.create_task(42)


@pytest.mark.parametrize('how', ['set_task_factory', '_task_factory'])
def test_create_task_after_the_task_factory_is_unset(loop, how):
    """Set, then unset, with set_task_factory() or by assigning `_task_factory` as
    code written for asyncio's loop may (asyncio's create_task reads it there)."""
    made = []

    def factory(lp, coro):
        made.append(coro)
        return asyncio.Task(coro, loop=lp)

    def set_factory(f):
        if how == 'set_task_factory':
            loop.set_task_factory(f)
        else:
            loop._task_factory = f

    async def coro():
        pass

    set_factory(factory)
    assert loop.get_task_factory() is factory
    loop.run_until_complete(loop.create_task(coro()))
    set_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(loop.create_task(coro()))
    assert len(made) == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason='create_task(context=) is new in 3.11')
def test_create_task_context(loop):
    ctx = contextvars.Context()
    ctx.run(VAR.set, 'task ctx')

    async def coro():
        await asyncio.sleep(0)
        seen = VAR.get()
        VAR.set('set in task')
        return seen

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == 'task ctx'
    assert ctx[VAR] == 'set in task'
    assert VAR.get() == 'default'


def test_create_task_default_context_is_a_copy(loop):
    token = VAR.set('outer')
    try:
        async def coro():
            VAR.set('inner')
            return VAR.get()

        assert loop.run_until_complete(loop.create_task(coro())) == 'inner'
        assert VAR.get() == 'outer'
    finally:
        VAR.reset(token)


def test_create_task_not_a_coroutine(loop):
    with pytest.raises(TypeError, match='^a coroutine was expected, got 1$'):
        loop.create_task(1)


def test_create_task_unknown_keyword(loop):
    async def coro():
        pass

    c = coro()
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        loop.create_task(c, bogus=1)
    c.close()


@pytest.mark.parametrize('with_factory', [False, True])
def test_create_task_other_keyword_as_the_stdlib(loop, with_factory):
    """`eager_start=` reaches the Task (or the factory) where this Python's
    create_task takes other keywords (3.13.4+), and is refused where it does not."""
    async def coro():
        return 'ran'

    def outcome(lp):
        if with_factory:
            lp.set_task_factory(lambda lp, c, **kwargs: asyncio.Task(c, loop=lp, **kwargs))
        c = coro()
        try:
            task = lp.create_task(c, eager_start=False)
        except TypeError as exc:
            c.close()
            return 'TypeError', 'eager_start' in str(exc)
        return lp.run_until_complete(task), task.get_name().startswith('Task-')

    stdlib = asyncio.SelectorEventLoop()
    try:
        expected = outcome(stdlib)
    finally:
        stdlib.close()
    assert outcome(loop) == expected


def test_create_task_on_closed_loop(loop):
    async def coro():
        pass

    loop.close()
    c = coro()
    with pytest.raises(RuntimeError, match='^Event loop is closed$'):
        loop.create_task(c)
    c.close()


def test_create_task_source_traceback_in_debug(loop):
    loop.set_debug(True)

    async def coro():
        pass

    task = loop.create_task(coro()); line = sys._getframe().f_lineno
    assert task._source_traceback[-1][:2] == (__file__, line)
    loop.run_until_complete(task)


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        t = loop.create_task(child(), name='child')
        tasks = asyncio.all_tasks()
        assert asyncio.current_task() in tasks and t in tasks
        await t
        return asyncio.current_task().get_name()

    assert loop.run_until_complete(loop.create_task(main(), name='main')) == 'main'
    assert asyncio.all_tasks(loop) == set()


# ----- task factory ---------------------------------------------------------------

@pytest.mark.skipif(sys.version_info < (3, 11), reason='create_task(context=) is new in 3.11')
def test_task_factory_get_set(loop):
    assert loop.get_task_factory() is None
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return VAR.get()

    ctx = contextvars.Context()
    ctx.run(VAR.set, 'factory ctx')
    t1 = loop.create_task(coro(), name='named')
    t2 = loop.create_task(coro(), context=ctx)
    assert t1.get_name() == 'named'
    assert loop.run_until_complete(t1) == 'default'
    assert loop.run_until_complete(t2) == 'factory ctx'
    # Without a context (and, before 3.14, a name) the factory gets the
    # two-argument legacy call.
    assert calls == [(loop, {'name': 'named'} if FACTORY_GETS_THE_NAME else {}), (loop, {'context': ctx})]
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_two_argument_task_factory(loop):
    def factory(lp, coro):
        task = asyncio.Task(coro, loop=lp)
        task.made_by_factory = True
        return task

    loop.set_task_factory(factory)

    async def coro():
        return 'ok'

    task = loop.create_task(coro())
    assert task.made_by_factory
    assert loop.run_until_complete(task) == 'ok'
    # run_until_complete wraps coroutines through the factory too.
    assert loop.run_until_complete(coro()) == 'ok'


@pytest.mark.parametrize('bad', [1, 'factory', object()])
def test_set_task_factory_type_error(loop, bad):
    with pytest.raises(TypeError, match='^task factory must be a callable or None$'):
        loop.set_task_factory(bad)
    assert loop.get_task_factory() is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason='eager tasks are new in Python 3.12')
def test_eager_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    out = []

    async def coro():
        out.append('ran eagerly')
        return 1

    async def main():
        t = loop.create_task(coro())
        out.append('after create_task')
        return await t

    assert loop.run_until_complete(main()) == 1
    assert out == ['ran eagerly', 'after create_task']
