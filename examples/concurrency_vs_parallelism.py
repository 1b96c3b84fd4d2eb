"""Concurrency is not parallelism, measured.

Coroutines on one event loop take turns: while one awaits (I/O, a timer), another
runs. That overlaps *waiting*, not *computing*. CPU-bound work needs other cores:
threads for code that releases the GIL, processes for pure Python.

Run it on ferroloop:  python -m ferroloop examples/concurrency_vs_parallelism.py
"""

import asyncio
import concurrent.futures
import os
import time

CPU_RUNS = 4


async def coroutine1():
    await asyncio.sleep(1)


async def coroutine2():
    await asyncio.sleep(2)


def cpu_bound(n=6_000_000):
    """Pure-Python arithmetic: holds the GIL the whole time."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


async def timed(label, coro):
    start = time.perf_counter()
    await coro
    took = time.perf_counter() - start
    print(f'{label:<48} {took:6.2f} s')
    return took


async def sequential_waits():
    await coroutine1()
    await coroutine2()


async def concurrent_waits():
    await asyncio.gather(coroutine1(), coroutine2())


async def cpu_on_the_loop(runs):
    for _ in range(runs):
        cpu_bound()  # blocks the loop: nothing else can run meanwhile


async def cpu_in_processes(pool):
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, cpu_bound) for _ in range(CPU_RUNS)))


async def main():
    loop = asyncio.get_running_loop()
    print(f'event loop: {type(loop).__module__}.{type(loop).__name__}; '
          f'{os.cpu_count()} CPU cores\n')

    print('1. Waiting: sleep(1) and sleep(2)')
    seq = await timed('   one after the other (await, await)', sequential_waits())
    conc = await timed('   concurrently (gather)', concurrent_waits())
    print(f'   -> concurrency overlaps the waits: {seq:.1f} s became {conc:.1f} s, '
          'the longer of the two.\n')

    print(f'2. Computing: a CPU-bound function, {CPU_RUNS} times')
    one = await timed('   once, on the loop', cpu_on_the_loop(1))
    blocking = await timed(f'   {CPU_RUNS}x on the loop (blocks it)', cpu_on_the_loop(CPU_RUNS))
    with concurrent.futures.ProcessPoolExecutor() as pool:
        await loop.run_in_executor(pool, int)  # start the workers before timing
        parallel = await timed(f'   {CPU_RUNS}x in a process pool (run_in_executor)', cpu_in_processes(pool))
    print(f'   -> on the loop it is {blocking / one:.1f}x one run: coroutines do not compute in '
          f'parallel. In processes it is {parallel / one:.1f}x one run: parallelism needs '
          'other cores.')


if __name__ == '__main__':
    asyncio.run(main())
