"""Scheduling micro-benchmarks: the loop's own cost per callback, timer and task
step, for every loop importable here (the stdlib loop, ferroloop, and uvloop/rloop
if installed), each in a fresh process, best of 3 runs. Prints milliseconds.

    python bench/scheduling.py            # all loops, all workloads
    python bench/scheduling.py ferroloop  # one loop (run by the above per process)
"""
import asyncio
import subprocess
import sys
import time

LOOPS = ('asyncio', 'uvloop', 'rloop', 'ferroloop')
N = 1_000_000


def loop_factory(name):
    if name == 'asyncio':
        return asyncio.new_event_loop
    return __import__(name).new_event_loop


def run_timed(loop, setup):
    setup()
    t0 = time.perf_counter()
    loop.run_forever()
    return time.perf_counter() - t0


def call_soon_chain(loop):
    """One callback per iteration, each scheduling the next: dispatch + call_soon."""
    count = [0]

    def cb():
        count[0] += 1
        if count[0] < N:
            loop.call_soon(cb)
        else:
            loop.stop()
    return run_timed(loop, lambda: loop.call_soon(cb))


def call_soon_args(loop):
    def cb(i, a, b):
        if i < N:
            loop.call_soon(cb, i + 1, a, b)
        else:
            loop.stop()
    return run_timed(loop, lambda: loop.call_soon(cb, 0, 1, 2))


def call_soon_batch(loop):
    """1000 callbacks queued per iteration."""
    def noop():
        pass

    def batch(i):
        for _ in range(1000):
            loop.call_soon(noop)
        if i < N // 1000:
            loop.call_soon(batch, i + 1)
        else:
            loop.stop()
    return run_timed(loop, lambda: loop.call_soon(batch, 0))


def timers_schedule_cancel(loop):
    """The pattern of every asyncio.timeout()/wait_for(): a timer set, then cancelled."""
    def noop():
        pass

    def go():
        for _ in range(200_000):
            loop.call_later(10, noop).cancel()
        loop.stop()
    return run_timed(loop, lambda: loop.call_soon(go))


def tasks_sleep0(loop):
    async def worker():
        for _ in range(5):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*[worker() for _ in range(20_000)])
    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


def queue_ping_pong(loop):
    async def main():
        ping, pong = asyncio.Queue(), asyncio.Queue()

        async def echo():
            while (item := await ping.get()) is not None:
                pong.put_nowait(item)
        task = asyncio.ensure_future(echo())
        for i in range(100_000):
            ping.put_nowait(i)
            await pong.get()
        ping.put_nowait(None)
        await task
    t0 = time.perf_counter()
    loop.run_until_complete(main())
    return time.perf_counter() - t0


WORKLOADS = (call_soon_chain, call_soon_args, call_soon_batch, timers_schedule_cancel,
             tasks_sleep0, queue_ping_pong)


def run_one(name):
    factory = loop_factory(name)
    for workload in WORKLOADS:
        best = float('inf')
        for _ in range(3):
            loop = factory()
            best = min(best, workload(loop))
            loop.close()
        print(f'{workload.__name__}\t{best * 1e3:.1f}', flush=True)


def main():
    results = {}
    for name in LOOPS:
        try:
            loop_factory(name)
        except ImportError:
            print(f'{name}: not installed, skipped', file=sys.stderr)
            continue
        out = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, check=True).stdout
        results[name] = dict(line.split('\t') for line in out.splitlines())
    names = list(results)
    print('| workload (ms, best of 3) | ' + ' | '.join(names) + ' |')
    print('|---|' + '---|' * len(names))
    for workload in WORKLOADS:
        row = [results[n][workload.__name__] for n in names]
        print(f'| {workload.__name__} | ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
    if len(sys.argv) > 1:
        run_one(sys.argv[1])
    else:
        main()
