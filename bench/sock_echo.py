"""sock_* echo over a socketpair: a server task echoes with sock_recv/sock_sendall,
the client does request/response with sock_sendall/sock_recv. Reports round trips/s
for the stdlib loop, ferroloop and (if installed) uvloop, best of 3.

    python bench/sock_echo.py [ROUND_TRIPS=50000] [MESSAGE_BYTES=100]"""
import asyncio, socket, sys, time
import ferroloop
try:
    import uvloop
except ImportError:
    uvloop = None

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50000
MSG = b'x' * int(sys.argv[2]) if len(sys.argv) > 2 else b'x' * 100

async def echo_server(loop, s):
    while True:
        d = await loop.sock_recv(s, 65536)
        if not d:
            return
        await loop.sock_sendall(s, d)

async def client(loop, c, n):
    for _ in range(n):
        await loop.sock_sendall(c, MSG)
        got = 0
        while got < len(MSG):
            got += len(await loop.sock_recv(c, 65536))

async def main(n):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False); b.setblocking(False)
    srv = asyncio.ensure_future(echo_server(loop, b))
    await client(loop, a, 1000)
    t0 = time.perf_counter()
    await client(loop, a, n)
    dt = time.perf_counter() - t0
    a.close()
    await srv
    b.close()
    return n / dt

factories = [('asyncio', asyncio.new_event_loop), ('ferroloop', ferroloop.new_event_loop)]
if uvloop:
    factories.append(('uvloop', uvloop.new_event_loop))
for name, f in factories:
    best = 0
    for _ in range(3):
        loop = f()
        best = max(best, loop.run_until_complete(main(N)))
        loop.close()
    print(f'{name:10s} {best:10.0f} round trips/s (msg {len(MSG)} B)')
