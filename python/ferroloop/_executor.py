"""``run_in_executor`` and the default executor, and the DNS calls that run on it
(``getaddrinfo``/``getnameinfo`` block in libc, so they go to a worker thread)."""

import concurrent.futures
import socket
import sys
import threading
import warnings
from asyncio import futures
from asyncio.log import logger


class ExecutorMixin:
    _default_executor = None
    _executor_shutdown_called = False

    def run_in_executor(self, executor, func, *args):
        """Run ``func(*args)`` in ``executor`` (None: the default thread pool) and
        return an asyncio future for its result."""
        self._check_closed()
        if self.get_debug():
            self._check_callback(func, 'run_in_executor')
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError('Executor shutdown has been called')
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix='asyncio')
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor):
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            if sys.version_info < (3, 11):
                # 3.10 still accepts any executor, with a deprecation warning.
                warnings.warn('Using the default executor that is not an instance of '
                              'ThreadPoolExecutor is deprecated and will be prohibited '
                              'in Python 3.9', DeprecationWarning, 2)
            else:
                raise TypeError('executor must be ThreadPoolExecutor instance')
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout=None):
        """Wait for the default executor's threads, joining them from a helper
        thread so the loop keeps running; give up after ``timeout`` seconds."""
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._join_executor, args=(executor, done))
        thread.start()
        try:
            await _wait_for(done, timeout)
        except TimeoutError:
            warnings.warn('The executor did not finishing joining '
                          f'its threads within {timeout} seconds.',
                          RuntimeWarning, stacklevel=2)
            executor.shutdown(wait=False)
        else:
            thread.join()

    def _join_executor(self, executor, done):
        try:
            executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_done, done, None)
        except Exception as exc:
            if not self.is_closed() and not done.cancelled():
                self.call_soon_threadsafe(_set_exception_unless_done, done, exc)

    def _shutdown_executor_nowait(self):
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        if self.get_debug():
            return await self.run_in_executor(None, _getaddrinfo_logged, self, host, port, family, type, proto, flags)
        if _is_numeric(host, port):
            return _numeric_getaddrinfo(host, port, family, type, proto, flags)
        return await self.run_in_executor(None, _getaddrinfo, self, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)


async def _wait_for(fut, timeout):
    if sys.version_info >= (3, 11):
        from asyncio import timeouts
        async with timeouts.timeout(timeout):
            await fut
    else:  # asyncio.TimeoutError is not yet the builtin TimeoutError on 3.10
        from asyncio import exceptions, tasks
        try:
            await tasks.wait_for(fut, timeout)
        except exceptions.TimeoutError:
            raise TimeoutError from None


def _is_numeric(host, port):
    """True when ``host`` is an IP address literal and ``port`` a number (or absent):
    getaddrinfo then reads no file and asks no server."""
    if port is not None and not isinstance(port, int):
        if not isinstance(port, (str, bytes)) or not port.isdigit():
            return False
    if not isinstance(host, str):
        return False
    try:
        socket.inet_pton(socket.AF_INET, host)
        return True
    except OSError:
        pass
    try:
        socket.inet_pton(socket.AF_INET6, host.partition('%')[0])
        return True
    except OSError:
        return False


_NUMERIC_ANSWERS = {}
_NUMERIC_ANSWERS_MAX = 256


def _numeric_getaddrinfo(*query):
    """getaddrinfo of an IP literal and port, on the loop thread: libc answers from
    the strings alone without blocking, so a thread hop (two wake-ups) would be all
    the cost. The answer depends on nothing else (but for AI_ADDRCONFIG, which looks
    at the machine's interfaces), so the last few are kept: a client connecting to
    one address again and again asks the same question. Callers get a new list of
    the same tuples, as from libc."""
    answer = _NUMERIC_ANSWERS.get(query)
    if answer is None:
        answer = socket.getaddrinfo(*query)
        if query[-1] & socket.AI_ADDRCONFIG:
            return answer
        if len(_NUMERIC_ANSWERS) >= _NUMERIC_ANSWERS_MAX:
            _NUMERIC_ANSWERS.clear()
        _NUMERIC_ANSWERS[query] = answer
    return list(answer)


def _getaddrinfo(loop, host, port, family, type, proto, flags):
    return socket.getaddrinfo(host, port, family, type, proto, flags)


def _getaddrinfo_logged(loop, host, port, family, type, proto, flags):
    """Debug mode: log the query and its answer with the time taken, in asyncio's
    words (at INFO when slower than ``slow_callback_duration``)."""
    query = [f'{host}:{port!r}']
    query += [f'{name}={value!r}' for name, value in
              (('family', family), ('type', type), ('proto', proto), ('flags', flags)) if value]
    query = ', '.join(query)
    logger.debug('Get address info %s', query)
    t0 = loop.time()
    addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
    took = loop.time() - t0
    log = logger.info if took >= loop.slow_callback_duration else logger.debug
    log(f'Getting address info {query} took {took * 1e3:.3f}ms: {addrinfo!r}')
    return addrinfo


def _set_result_unless_done(fut, result):
    if not fut.done():
        fut.set_result(result)


def _set_exception_unless_done(fut, exc):
    if not fut.done():
        fut.set_exception(exc)
