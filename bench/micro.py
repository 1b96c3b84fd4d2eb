"""Micro-benchmarks: the loop's own cost per callback, timer, task step, future
hand-off, queue item and numeric getaddrinfo; and (tls_spawn.py) per TLS echo round
trip and per subprocess spawn + wait. One workload of one loop per
process (run.py starts a fresh process for each run), so no run inherits another's
heap, caches or freelists.

    python bench/micro.py LOOP WORKLOAD [--n N] [--warmup W]
    python bench/micro.py --list

Prints one JSON line: {"loop", "workload", "ops", "seconds", "cpu_s", "ops_per_s",
"ops_per_cpu_s"}; cpu_s is the process's CPU time (all threads), which run.py
compares: on a shared machine wall time also counts the time other processes ran.
A warm-up pass (a tenth of N, at least 1000; all of N for call_soon_threadsafe; or
--warmup W) runs first on the same loop and is not timed, so the number is the
steady state rather than first-call costs. A loop lacking something a workload needs prints {"unsupported": "<reason>"}
and exits 0: run.py shows it.
"""
import argparse
import asyncio
import contextvars
import gc
import json
import socket
import sys
import threading
import time

import tls_spawn
from loops import Unsupported, factory

BATCH = 1000  # callbacks queued per loop iteration in the batched workloads
SMALL_BATCH = 100  # callbacks queued per iteration in the plain call_soon workloads


def noop():
    pass


def noop3(a, b, c):
    pass


def _batched(loop, n, per_iter, schedule):
    """Run n operations as n/per_iter loop iterations; `schedule(k)` queues k of them
    in a plain `for` loop of its own, so the only Python frame per operation is the
    callback's (a helper called per operation would add a frame of the benchmark's
    to every loop's figure and dilute the differences between loops)."""
    left = [n // per_iter]

    def driver():
        schedule(per_iter)
        left[0] -= 1
        if left[0]:
            loop.call_soon(driver)
        else:
            loop.call_soon(loop.stop)  # after this iteration's callbacks have run
    loop.call_soon(driver)
    loop.run_forever()
    return (n // per_iter) * per_iter


def call_soon(loop, n):
    """call_soon(cb) with no arguments: schedule + dispatch, 100 ready per iteration."""
    def schedule(k, call_soon=loop.call_soon):
        for _ in range(k):
            call_soon(noop)
    return _batched(loop, n, SMALL_BATCH, schedule)


def call_soon_args(loop, n):
    """call_soon(cb, 1, 2, 3): the cost of carrying positional arguments."""
    def schedule(k, call_soon=loop.call_soon):
        for _ in range(k):
            call_soon(noop3, 1, 2, 3)
    return _batched(loop, n, SMALL_BATCH, schedule)


def call_soon_context(loop, n):
    """call_soon(cb, context=ctx): what C Task/Future do on every step and done callback."""
    def schedule(k, call_soon=loop.call_soon, ctx=contextvars.copy_context()):
        for _ in range(k):
            call_soon(noop, context=ctx)
    return _batched(loop, n, SMALL_BATCH, schedule)


def call_soon_chain(loop, n):
    """Each callback schedules the next: one callback per loop iteration, so this is
    the cost of an iteration of the loop itself."""
    count = [0]

    def cb():
        count[0] += 1
        if count[0] < n:
            loop.call_soon(cb)
        else:
            loop.stop()
    loop.call_soon(cb)
    loop.run_forever()
    return n


def call_soon_batch(loop, n):
    """1000 callbacks queued, then run: a long ready queue."""
    def schedule(k, call_soon=loop.call_soon):
        for _ in range(k):
            call_soon(noop)
    return _batched(loop, n, BATCH, schedule)


def call_soon_threadsafe(loop, n):
    """Another thread calls call_soon_threadsafe n times; the loop runs them all."""
    count = [0]

    def cb():
        count[0] += 1
        if count[0] == n:
            loop.stop()

    def producer():
        cst = loop.call_soon_threadsafe
        for _ in range(n):
            cst(cb)
    thread = threading.Thread(target=producer)
    thread.start()
    loop.run_forever()
    thread.join()
    return n


def call_later_fire(loop, n):
    """call_later(0, cb), 1000 per iteration, each fired on the next iteration: timer
    heap push + pop + dispatch."""
    def schedule(k, call_later=loop.call_later):
        for _ in range(k):
            call_later(0, noop)
    return _batched(loop, n, BATCH, schedule)


def timer_cancel(loop, n):
    """call_later(10, cb) then .cancel(): what every asyncio.timeout()/wait_for() does
    when the awaited thing finishes in time. The timer never fires."""
    def schedule(k, call_later=loop.call_later):
        for _ in range(k):
            call_later(10, noop).cancel()
    return _batched(loop, n, BATCH, schedule)


def tasks_sleep0(loop, n):
    """n tasks in groups of 1000, each awaiting asyncio.sleep(0) five times, gathered."""
    async def worker():
        for _ in range(5):
            await asyncio.sleep(0)

    async def main():
        for _ in range(n // BATCH):
            await asyncio.gather(*[worker() for _ in range(BATCH)])
    loop.run_until_complete(main())
    return (n // BATCH) * BATCH


def create_task_done(loop, n):
    """create_task of a coroutine that finishes without suspending, then await it."""
    async def finished():
        return None

    async def main():
        create_task = loop.create_task
        for _ in range(n):
            await create_task(finished())
    loop.run_until_complete(main())
    return n


def future_ping_pong(loop, n):
    """Two tasks hand a Future back and forth: set_result wakes the other task."""
    async def main():
        inbox = [loop.create_future()]  # the future task b awaits next

        async def b():
            for _ in range(n):
                reply = await inbox[0]
                inbox[0] = loop.create_future()  # before answering, so a's next send lands here
                reply.set_result(None)
        task = loop.create_task(b())
        for _ in range(n):
            mine = loop.create_future()
            inbox[0].set_result(mine)
            await mine
        await task
    loop.run_until_complete(main())
    return n


def queue(loop, n):
    """asyncio.Queue(maxsize=10): one producer task puts n items, one consumer gets them."""
    async def main():
        q = asyncio.Queue(maxsize=10)

        async def consumer():
            for _ in range(n):
                await q.get()
        task = loop.create_task(consumer())
        for i in range(n):
            await q.put(i)
        await task
    loop.run_until_complete(main())
    return n


def getaddrinfo_numeric(loop, n):
    """loop.getaddrinfo('127.0.0.1', 80): no DNS involved, so this is the loop's own
    overhead (the stdlib hops to a thread pool for it)."""
    async def main():
        for _ in range(n):
            await loop.getaddrinfo('127.0.0.1', 80, type=socket.SOCK_STREAM)
    loop.run_until_complete(main())
    return n


# Name -> (function, default N). Each N takes about half a second on the stdlib loop.
WORKLOADS = {
    'call_soon': (call_soon, 500_000),
    'call_soon_args': (call_soon_args, 500_000),
    'call_soon_context': (call_soon_context, 500_000),
    'call_soon_chain': (call_soon_chain, 300_000),
    'call_soon_batch': (call_soon_batch, 500_000),
    'call_soon_threadsafe': (call_soon_threadsafe, 300_000),
    'call_later_fire': (call_later_fire, 200_000),
    'timer_cancel': (timer_cancel, 300_000),
    'tasks_sleep0': (tasks_sleep0, 20_000),
    'create_task_done': (create_task_done, 50_000),
    'future_ping_pong': (future_ping_pong, 50_000),
    'queue': (queue, 100_000),
    'getaddrinfo_numeric': (getaddrinfo_numeric, 5_000),
    **tls_spawn.WORKLOADS,
}


# Workloads whose warm-up is all of N, not a tenth: call_soon_threadsafe's producer
# queues tens of thousands of callbacks each time it holds the GIL (its 5 ms switch
# interval), so a tenth of N would warm allocators and free lists for less than one
# such burst, and the timed part would measure a cold process.
FULL_WARMUP = {'call_soon_threadsafe'}


def default_warmup(workload, n):
    return n if workload in FULL_WARMUP else max(n // 10, 1000)


def measure(loop_name, workload, n, warmup=None):
    fn = WORKLOADS[workload][0]
    loop = factory(loop_name)()
    try:
        asyncio.set_event_loop(loop)
        fn(loop, default_warmup(workload, n) if warmup is None else warmup)  # allocators, freelists, lazily made objects
        # The interpreter's start-up objects are still in the collector's young
        # generations: their first full collection (10-17 ms on 3.13) would land in
        # the timed run of whichever loop allocates collectable objects, as a
        # one-off start-up cost (measured in call_soon_threadsafe: 6-10 % of the run).
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        ops = fn(loop, n)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        loop.close()
    return {'loop': loop_name, 'workload': workload, 'ops': ops, 'seconds': seconds, 'cpu_s': cpu,
            'ops_per_s': ops / seconds, 'ops_per_cpu_s': ops / cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('loop', nargs='?')
    ap.add_argument('workload', nargs='?', choices=sorted(WORKLOADS))
    ap.add_argument('--n', type=int, help='operations to time (default: per workload)')
    ap.add_argument('--warmup', type=int, help='operations run first, untimed (default: N/10, at least 1000; N for call_soon_threadsafe)')
    ap.add_argument('--list', action='store_true', help='print the workload names and exit')
    args = ap.parse_args()
    if args.list:
        print('\n'.join(WORKLOADS))
        return
    if not args.loop or not args.workload:
        ap.error('LOOP and WORKLOAD are required')
    try:
        result = measure(args.loop, args.workload, args.n or WORKLOADS[args.workload][1], args.warmup)
    except Unsupported as exc:
        result = {'loop': args.loop, 'workload': args.workload, 'unsupported': str(exc)}
    except (NotImplementedError, AttributeError) as exc:
        result = {'loop': args.loop, 'workload': args.workload, 'unsupported': f'{type(exc).__name__}: {exc}'}
    print(json.dumps(result), flush=True)


if __name__ == '__main__':
    sys.exit(main())
