"""``python -m ferroloop script.py [args...]`` (or ``-m module [args...]``): run an
unmodified asyncio program with ferroloop as the loop of every ``asyncio.run`` and
``asyncio.new_event_loop`` in it. ``sys.argv``, ``__main__`` and the exit status are
what ``python script.py`` would give."""

import os
import runpy
import sys

from . import EventLoopPolicy, _set_policy

USAGE = 'usage: python -m ferroloop script.py [args...] | -m module [args...]'


def main(argv):
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    _set_policy(EventLoopPolicy())
    if argv[0] == '-m':
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
        return 0
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    runpy.run_path(script, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
