"""Leak check under churn: fd count and RSS of this process before and after N
TCP connect/close cycles against a streams server, both on one loop (default
ferroloop; pass 'asyncio' for the stdlib loop). Not a test: it prints figures.

    python bench/connect_cycles.py [ferroloop|asyncio] [CYCLES=100000]"""
import asyncio
import gc
import os
import sys

import ferroloop


def fd_count():
    return len(os.listdir('/proc/self/fd'))


def rss_kib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])


async def main(cycles, concurrency=50):
    async def handle(reader, writer):
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]

    async def one():
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'ping')
        writer.write_eof()
        await reader.read()
        writer.close()
        await writer.wait_closed()

    async def worker(n):
        for _ in range(n):
            await one()

    await worker(1000)  # warm-up: allocator pools, executor threads, caches
    gc.collect()
    before = fd_count(), rss_kib()
    per_worker = cycles // concurrency
    await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
    server.close()
    await server.wait_closed()
    gc.collect()
    after = fd_count(), rss_kib()
    print(f'{cycles} connect/close cycles: fds {before[0]} -> {after[0]}, '
          f'RSS {before[1]} KiB -> {after[1]} KiB')


if __name__ == '__main__':
    kind = sys.argv[1] if len(sys.argv) > 1 else 'ferroloop'
    cycles = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    factory = ferroloop.new_event_loop if kind == 'ferroloop' else asyncio.new_event_loop
    loop = factory()
    try:
        loop.run_until_complete(main(cycles))
    finally:
        loop.close()
