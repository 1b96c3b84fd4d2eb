"""Spawn + wait of ``/bin/true`` through ``asyncio.create_subprocess_exec``, for
every loop importable here (the stdlib loop, ferroloop, uvloop if installed), each
in a fresh process, rounds interleaved (loop A, B, C, then A, B, C again...) so
that the machine's background load falls on every loop alike. Prints the median
over rounds of spawns per second (wall clock) and of the parent's CPU time per
spawn (user + system of the loop's process, children excluded).

    python bench/subprocess_spawn.py [rounds]   # all loops
    python bench/subprocess_spawn.py --one LOOP WORKLOAD N   # one measurement (run by the above)
"""
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

LOOPS = ('asyncio', 'uvloop', 'ferroloop')
N = 500
CONCURRENT = 16


async def sequential(n):
    """One child at a time: spawn, wait."""
    for _ in range(n):
        p = await asyncio.create_subprocess_exec('/bin/true')
        await p.wait()


async def concurrent(n):
    """Up to CONCURRENT children at once, n in all."""
    sem = asyncio.Semaphore(CONCURRENT)

    async def one():
        async with sem:
            p = await asyncio.create_subprocess_exec('/bin/true')
            await p.wait()
    await asyncio.gather(*[one() for _ in range(n)])


async def with_pipe(n):
    """One child at a time, stdout piped and read to the end (communicate)."""
    for _ in range(n):
        p = await asyncio.create_subprocess_exec('/bin/true', stdout=subprocess.PIPE)
        await p.communicate()


WORKLOADS = {'sequential': sequential, 'concurrent 16': concurrent, 'stdout pipe': with_pipe}


def one(loop_name, workload, n):
    if loop_name == 'asyncio':
        loop = asyncio.new_event_loop()
    else:
        loop = __import__(loop_name).new_event_loop()
    loop.run_until_complete(WORKLOADS[workload](20))  # warm up
    t0, c0 = time.perf_counter(), os.times()
    loop.run_until_complete(WORKLOADS[workload](n))
    wall, c1 = time.perf_counter() - t0, os.times()
    loop.close()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    print(json.dumps({'rate': n / wall, 'cpu_us': cpu / n * 1e6}))


def available():
    found = []
    for name in LOOPS:
        try:
            if name != 'asyncio':
                __import__(name)
            found.append(name)
        except ImportError:
            pass
    return found


def main():
    if len(sys.argv) > 1 and sys.argv[1] == '--one':
        return one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    loops = available()
    print(f'spawn + wait of /bin/true, {N} per measurement, median of {rounds} interleaved rounds')
    print(f"{'workload':<16}" + ''.join(f'{name:>22}' for name in loops))
    for workload in WORKLOADS:
        results = {name: [] for name in loops}
        for _ in range(rounds):
            for name in loops:
                out = subprocess.run([sys.executable, __file__, '--one', name, workload, str(N)],
                                     capture_output=True, text=True, check=True).stdout
                results[name].append(json.loads(out))
        cells = []
        for name in loops:
            rate = statistics.median(r['rate'] for r in results[name])
            cpu = statistics.median(r['cpu_us'] for r in results[name])
            cells.append(f'{rate:8.0f}/s {cpu:6.0f} µs cpu')
        print(f'{workload:<16}' + ''.join(f'{c:>22}' for c in cells))


if __name__ == '__main__':
    main()
