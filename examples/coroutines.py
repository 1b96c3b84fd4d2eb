import asyncio

async def coroutine1():
    print('coroutine 1 starts')
    await asyncio.sleep(1)
    print('coroutine 1 ends')

async def coroutine2():
    print('coroutine 2 starts')
    await asyncio.sleep(2)
    print('coroutine 2 ends')

asyncio.run(coroutine1())
asyncio.run(coroutine2())
