"""Instructions per operation under `valgrind --tool=callgrind`: a count that does not
depend on what else the shared machine is doing, so a change of a few percent in a
hot path shows, where CPU-time benchmarks vary by 5-30 % between runs.

    python bench/callgrind.py [--loops a,b] [--only SUBSTR] [--jobs 2] [--out DIR]
    python bench/callgrind.py --compare bench/baselines/callgrind.json     # measure, then compare
    python bench/callgrind.py --compare BASE.json --current NEW.json       # compare two saved runs
    python bench/callgrind.py --current FILE.json                          # a saved run's table

Each job runs N and 2N operations per loop, and (Ir(2N) - Ir(N)) / N is the
instructions per operation, with start-up, imports, the warm-up and each phase's
fixed costs cancelled out. Ir is callgrind's user-space instruction count of the
whole process, every thread included. A scheduling workload of micro.py runs both
phases in one fresh process (cg_micro.py marks where each ends); a network server of
servers.py runs twice, in fresh processes, each answering a fixed number of requests
from loadgen (`--requests`). PYTHONHASHSEED is fixed so every run hashes alike.

Writes callgrind.md (also printed) and callgrind.json to --out (default
bench/results/). --compare prints each job's change against a saved run and exits 1
when ferroloop's count grew by more than --threshold percent (default 2) anywhere.
"""
import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import loops
import micro
import run

BENCH = run.BENCH
KIB = 1024
WARMUP = 1000  # operations run before the measured ones, in both runs (not counted)

# Scheduling: N per workload, so that the stdlib loop's 2N phase costs ~100 M
# instructions (a few seconds under callgrind, ~50x slower than native) and the
# whole run stays near 10 minutes (TLS and spawns take ~55 and ~30 s a loop, mostly
# start-up, handshakes and forks); the batched workloads need multiples of 1000.
MICRO_N = {
    'call_soon': 10_000, 'call_soon_args': 10_000, 'call_soon_context': 10_000, 'call_soon_chain': 5_000,
    'call_soon_batch': 10_000, 'call_soon_threadsafe': 3_000, 'call_later_fire': 5_000, 'timer_cancel': 5_000,
    'tasks_sleep0': 1_000, 'create_task_done': 2_000, 'future_ping_pong': 2_000, 'queue': 3_000,
    'getaddrinfo_numeric': 300, 'tls_echo_1k': 500, 'tls_echo_64k': 50, 'spawn_true': 20, 'spawn_true_concurrent': 32,
}
# How often the loop wakes depends on how its thread and the producer interleave (or
# when the children exit, or whether the client's next datagram or request is there
# already when the UDP or sock_* server looks: if not, the sock_recv waits on a future
# and the loop runs another iteration), which valgrind leaves to timing: the count
# varies by up to ~50 % between runs (the sock_* echo from 6,000 to 25,000 with the
# same build), so the table marks these and --compare does not flag them.
TIMING_DEPENDENT = {'micro/call_soon_threadsafe', 'micro/spawn_true', 'micro/spawn_true_concurrent',
                    'udp/1 KiB x1/udp', 'echo/1 KiB x1/sock'}
# Network: (label, servers.py style, loadgen mode, size, N requests), one connection.
NET_JOBS = [
    ('echo/1 KiB x1/protocol', 'protocol', 'tcp', KIB, 2_000),
    ('echo/1 KiB x1/streams', 'streams', 'tcp', KIB, 2_000),
    ('echo/1 KiB x1/sock', 'sock', 'tcp', KIB, 2_000),
    ('udp/1 KiB x1/udp', 'udp', 'udp', KIB, 2_000),
    ('http/x1/http_one', 'http_one', 'http', 0, 2_000),
    ('http/x1/http_split', 'http_split', 'http', 0, 2_000),
]
FERRO = 'ferroloop'


def valgrind(out_file, cmd, *options):
    return ['valgrind', '--tool=callgrind', '--quiet', f'--callgrind-out-file={out_file}', *options, *cmd]


def env():
    return {**os.environ, 'PYTHONHASHSEED': '0'}


def total_ir(out_file):
    with open(out_file) as f:
        for line in f:
            if line.startswith('summary:'):
                return int(line.split()[1])
    raise run.Failed(f'no summary line in {out_file}')


# ---------------------------------------------------------------- one measured process

def phase_counts(out_file, phases):
    """The Ir of each phase a `--dump-before` mark ended, in order."""
    counts = [total_ir(f'{out_file}.{i}') for i in range(1, phases + 1)]
    if os.path.exists(f'{out_file}.{phases + 1}'):
        raise run.Failed(f'more than {phases} marks: something else called the marking function')
    return counts


def micro_run(loop, workload, n, tmp):
    """[N, 2N] operations and their Ir, both phases of one process (cg_micro.py)."""
    out = os.path.join(tmp, f'{loop}-{workload}.cg')
    cmd = [sys.executable, os.path.join(BENCH, 'cg_micro.py'), loop, workload, str(n), str(min(WARMUP, n))]
    proc = subprocess.run(valgrind(out, cmd, '--dump-before=getppid'), capture_output=True, text=True,
                          timeout=600, env=env())
    if proc.returncode:
        raise run.Failed(f'exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ["?"])[-1]}')
    ops = json.loads(proc.stdout.strip().splitlines()[-1])['ops']
    return ops, phase_counts(out, 3)[1:]


def micro_check(loop, workload):
    """A short native run: writes micro.py's .pyc files, finds what the loop lacks."""
    cmd = [sys.executable, os.path.join(BENCH, 'micro.py'), loop, workload, '--n', '1000', '--warmup', '1000']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env())
    if proc.returncode or not proc.stdout.strip():
        raise run.Failed(f'exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ["?"])[-1]}')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if 'unsupported' in result:
        raise run.Unsupported(result['unsupported'])


def server_cmd(loop, style, mode):
    if loop == run.CEILING:
        return [os.path.join(run.tools_dir(), 'echo-server'), '--mode', mode, '--port', '0']
    return [sys.executable, os.path.join(BENCH, 'servers.py'), loop, style]


def net_run(loop, style, mode, size, n, tmp, under_valgrind=True):
    """A server (under callgrind) answering exactly n requests of one connection."""
    out = os.path.join(tmp, f'{loop}-{style}-{n}.cg')
    cmd = server_cmd(loop, style, mode)
    server = run.Server(valgrind(out, cmd) if under_valgrind else cmd, timeout=120, env=env())
    try:
        lg = [os.path.join(run.tools_dir(), 'loadgen'), mode, '--addr', f'127.0.0.1:{server.port}',
              '--requests', str(n), '--duration', '300']
        if size:
            lg += ['--size', str(size)]
        proc = subprocess.run(lg, capture_output=True, text=True, timeout=400)
        if proc.returncode:
            raise run.Failed(f'loadgen exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ["?"])[-1]}')
    finally:
        server.stop()  # SIGTERM: valgrind writes the counts as the process ends
    if under_valgrind and server.proc.returncode != -signal.SIGTERM:
        raise run.Failed(f'server ended with {server.proc.returncode}, not by SIGTERM')
    return n, (total_ir(out) if under_valgrind else None)


# ---------------------------------------------------------------- the matrix

def jobs(names, only):
    out = [dict(label=f'micro/{w}', kind='micro', workload=w, n=MICRO_N.get(w), loops=names) for w in micro.WORKLOADS]
    for label, style, mode, size, n in NET_JOBS:
        out.append(dict(label=label, kind='net', style=style, mode=mode, size=size, n=n, loops=[*names, run.CEILING]))
    return [j for j in out if not only or only in j['label']]


def measure(job, loop, tmp):
    """{'instr_per_op', ...} for one loop on one job, or {'error': why}."""
    t0 = time.monotonic()
    if job['n'] is None:
        return {'error': 'no N chosen for it: add it to MICRO_N in callgrind.py'}
    try:
        if job['kind'] == 'micro':
            micro_check(loop, job['workload'])
            ops, ir = micro_run(loop, job['workload'], job['n'], tmp)
        else:
            # Natively first: writes the .pyc files (a compile in one measured run and not
            # the other would skew the difference) and finds what the loop lacks.
            net_run(loop, job['style'], job['mode'], job['size'], min(WARMUP, job['n']), tmp, under_valgrind=False)
            ops, ir = zip(*(net_run(loop, job['style'], job['mode'], job['size'], n, tmp) for n in (job['n'], 2 * job['n'])))
    except run.Unsupported as exc:
        return {'error': f'unsupported: {exc}'}
    except (run.Failed, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        return {'error': f'failed: {exc}'}
    return {'instr_per_op': round((ir[1] - ir[0]) / (ops[1] - ops[0]), 1), 'ops': list(ops), 'ir': list(ir),
            'wall_s': round(time.monotonic() - t0, 1)}


def measure_all(names, only, parallel):
    todo = [(job, loop) for job in jobs(names, only) for loop in job['loops']]
    results = {job['label']: {'n': job['n']} for job, _ in todo}
    with tempfile.TemporaryDirectory(prefix='bench-callgrind-') as tmp, \
            concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        futures = {pool.submit(measure, job, loop, tmp): (job, loop) for job, loop in todo}
        for fut in concurrent.futures.as_completed(futures):
            job, loop = futures[fut]
            res = results[job['label']][loop] = fut.result()
            shown = res.get('error') or f"{res['instr_per_op']:,.0f} instr/op ({res['wall_s']} s)"
            print(f"callgrind: {job['label']} {loop}: {shown}", file=sys.stderr)
    return results  # in job order: each label was inserted before any result came in


# ---------------------------------------------------------------- tables

def table(data):
    names = data['loops']
    with_ceiling = any(run.CEILING in row for row in data['results'].values())
    cols = names + ([run.CEILING] if with_ceiling else [])
    lines = ['| job | N | ' + ' | '.join(cols) + ' |', '| --- | ---: |' + ' ---: |' * len(cols)]
    for label, row in data['results'].items():
        base = row.get(loops.BASELINE, {}).get('instr_per_op')
        cells = []
        for loop in cols:
            res = row.get(loop)
            if res is None:
                cells.append('')
            elif 'error' in res:
                cells.append(res['error'])
            else:
                ratio = f" ({res['instr_per_op'] / base:.2f}×)" if base else ''
                cells.append(f"{res['instr_per_op']:,.0f}{ratio}")
        mark = ' †' if label in TIMING_DEPENDENT else ''
        lines.append(f"| {label}{mark} | {row['n'] or 0:,} | " + ' | '.join(cells) + ' |')
    m = data['machine']
    return '\n'.join([
        f"## Instructions per operation (callgrind; lower is better; (×) = ratio to {loops.BASELINE})", '',
        f"{m['cpu_model']}, {m['python']}, commit {m['commit']}, {m['date_utc']} UTC; "
        f"(Ir(2N) − Ir(N)) / N, {data['elapsed_s']} s in all. Loops: "
        + ', '.join(f'{name} {ver}' for name, ver in m['loops'].items()) + '.', '', *lines, '',
        '† depends on how threads, child processes or client and server interleave: varies by up to ~50 % between runs, never flagged.', ''])


def compare(base, cur, threshold):
    """Prints the change of every job and loop against `base`; the ferroloop regressions."""
    lines = ['| job | loop | baseline | now | change |', '| --- | --- | ---: | ---: | ---: |']
    regressions, changes = [], []
    for label, row in cur['results'].items():
        for loop, res in row.items():
            old = base['results'].get(label, {}).get(loop)
            if loop == 'n' or not isinstance(old, dict) or 'instr_per_op' not in old:
                continue
            if 'error' in res:
                lines.append(f"| {label} | {loop} | {old['instr_per_op']:,.0f} | {res['error']} | |")
                if loop == FERRO:
                    regressions.append(f"{label}: {res['error']}")
                continue
            change = 100 * (res['instr_per_op'] / old['instr_per_op'] - 1)
            if label not in TIMING_DEPENDENT:
                changes.append((abs(change), f'{label} {loop}'))
            flag = ''
            if label in TIMING_DEPENDENT:
                flag = ' (timing-dependent: not flagged)'
            elif loop == FERRO and change > threshold:
                flag = ' **REGRESSION**'
                regressions.append(f'{label}: {change:+.1f} %')
            lines.append(f"| {label} | {loop} | {old['instr_per_op']:,.0f} | {res['instr_per_op']:,.0f} | "
                         f"{change:+.2f} %{flag} |")
    print(f'## Change against {base["machine"]["commit"]} ({base["machine"]["date_utc"]} UTC)\n')
    print('\n'.join(lines))
    if changes:
        worst = max(changes)
        print(f'\nLargest change, any loop, timing-dependent jobs aside: {worst[0]:.2f} % ({worst[1]}); '
              f'median {sorted(c for c, _ in changes)[len(changes) // 2]:.2f} % over {len(changes)} counts.')
    print(f'\n{FERRO}: ' + (f'{len(regressions)} regression(s) above {threshold} %: ' + '; '.join(regressions)
                            if regressions else f'no regression above {threshold} %'))
    return 1 if regressions else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--loops', default=','.join(loops.NAMES), help='comma-separated (default: all)')
    ap.add_argument('--only', help='run only jobs whose label (e.g. micro/queue, http/x1/http_one) contains this')
    ap.add_argument('--jobs', type=int, default=2, help='processes measured at once (counts do not depend on it)')
    ap.add_argument('--out', default=os.path.join(BENCH, 'results'))
    ap.add_argument('--compare', metavar='FILE', help='a saved callgrind.json to compare against')
    ap.add_argument('--current', metavar='FILE', help='a saved run to print (or compare) instead of measuring')
    ap.add_argument('--threshold', type=float, default=2.0, help='percent growth flagged for ferroloop (default 2)')
    args = ap.parse_args()
    if args.current:
        with open(args.current) as f:
            current = json.load(f)
        if not args.compare:
            print(table(current))
            return 0
        with open(args.compare) as f:
            return compare(json.load(f), current, args.threshold)
    names = [n for n in args.loops.split(',') if n]
    status = {name: (ver or f'unsupported: {why}') for name in names for ver, why in [loops.probe(name)]}
    t0 = time.monotonic()
    results = measure_all(names, args.only, args.jobs)
    data = {'machine': run.machine_info(status), 'loops': names, 'only': args.only, 'warmup_ops': WARMUP,
            'elapsed_s': round(time.monotonic() - t0, 1), 'results': results}
    os.makedirs(args.out, exist_ok=True)
    md = table(data)
    with open(os.path.join(args.out, 'callgrind.json'), 'w') as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(args.out, 'callgrind.md'), 'w') as f:
        f.write(md)
    print(md)
    if args.compare:
        with open(args.compare) as f:
            return compare(json.load(f), data, args.threshold)
    return 0


if __name__ == '__main__':
    sys.exit(main())
