"""The process callgrind.py measures for one scheduling workload of micro.py: a fresh
loop, a warm-up, then N and 2N operations, each phase ended by a mark.

    valgrind --tool=callgrind --dump-before=getppid ... python bench/cg_micro.py LOOP WORKLOAD N WARMUP

The mark is a call of os.getppid(), which nothing else in these processes calls:
callgrind, told `--dump-before=getppid`, writes the counts of each phase to its own
file. Measuring both phases in one process pays Python's start-up (~300 M
instructions, more than most phases) once instead of twice. Prints {"ops": [N, 2N]}
as the workload counted them.
"""
import asyncio
import json
import os
import sys

import micro
from loops import factory


def main():
    loop_name, workload, n, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    fn = micro.WORKLOADS[workload][0]
    loop = factory(loop_name)()
    try:
        asyncio.set_event_loop(loop)  # as micro.py does
        fn(loop, warmup)
        os.getppid()  # end of start-up and warm-up
        ops = [fn(loop, n)]
        os.getppid()  # end of N
        ops.append(fn(loop, 2 * n))
        os.getppid()  # end of 2N
    finally:
        loop.close()
    print(json.dumps({'ops': ops}), flush=True)


if __name__ == '__main__':
    sys.exit(main())
