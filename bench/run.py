"""The benchmark suite: every workload for every loop, each run in a fresh process,
loops interleaved round by round (A, B, C, D, A, B, C, D ...) so that machine noise
hits all of them alike. Writes results.md (also printed), results.json (every raw run)
and ratios.png to --out. Start it through run.sh, which builds what it needs.

    python bench/run.py [--quick] [--rounds N] [--loops a,b] [--only SUBSTR] [--out DIR]
                        [--server-env KEY=VALUE ...]

Network runs pin the server and the Rust load generator to the SAME CPU: on these
VMs a wake-up across CPUs costs ~25 us each way and would swamp the loops'
differences. The load generator reads the server's CPU time from /proc, which is
the undiluted per-request comparison (see README.md).
"""
import argparse
import json
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time

import loops
import micro
import report

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
CEILING = 'rust'  # the pure-Rust echo-server's name in the results
KIB = 1024
IDLE_CONNS = 10_000

ECHO_STYLES = ('sock', 'streams', 'protocol', 'buffered')
HTTP_STYLES = ('http_one', 'http_split')


class Settings:
    """Per-mode sizes of the runs: --quick trades precision for a run under 5 minutes."""

    def __init__(self, quick, rounds, server_env=None):
        self.quick = quick
        # Added to every network server's environment (each loop and the ceiling).
        self.server_env = server_env or {}
        self.rounds = rounds or (2 if quick else 3)
        self.micro_scale = 0.5 if quick else 1.0
        self.duration = 0.5 if quick else 2.0
        self.warmup = 0.2 if quick else 0.5
        self.memory_rounds = 1 if quick else self.rounds
        if quick:
            self.echo_cases = [(1 * KIB, 1), (1 * KIB, 10), (100 * KIB, 10)]
            self.http_conns = [10]
            self.udp_conns = [10]
        else:
            self.echo_cases = [(size, conns) for size in (1 * KIB, 10 * KIB, 100 * KIB) for conns in (1, 10)]
            self.http_conns = [1, 10]
            self.udp_conns = [1, 10]


def plan(s):
    """The jobs of one round, in order. Each job is run for every loop in turn (and
    for the Rust ceiling where it has one) before the next job starts."""
    jobs = [dict(group='micro', case=w, style=w) for w in micro.WORKLOADS]
    for size, conns in s.echo_cases:
        case = f'{size // KIB} KiB x{conns}'
        jobs.append(dict(group='echo', case=case, style=CEILING, mode='tcp', size=size, conns=conns))
        jobs += [dict(group='echo', case=case, style=st, mode='tcp', size=size, conns=conns) for st in ECHO_STYLES]
    for conns in s.http_conns:
        case = f'x{conns}'
        jobs.append(dict(group='http', case=case, style=CEILING, mode='http', size=0, conns=conns))
        jobs += [dict(group='http', case=case, style=st, mode='http', size=0, conns=conns) for st in HTTP_STYLES]
    for conns in s.udp_conns:
        case = f'1 KiB x{conns}'
        jobs.append(dict(group='udp', case=case, style=CEILING, mode='udp', size=KIB, conns=conns))
        jobs.append(dict(group='udp', case=case, style='udp', mode='udp', size=KIB, conns=conns))
    jobs.append(dict(group='memory', case=f'{IDLE_CONNS:,} idle', style=CEILING, conns=IDLE_CONNS))
    jobs.append(dict(group='memory', case=f'{IDLE_CONNS:,} idle', style='protocol', conns=IDLE_CONNS))
    return jobs


def label(job):
    return f"{job['group']}/{job['case']}/{job['style']}"


# ---------------------------------------------------------------- process helpers

def tools_dir():
    target = os.environ.get('CARGO_TARGET_DIR', os.path.join(ROOT, 'target'))
    return os.environ.get('BENCH_TOOLS_DIR', os.path.join(target, 'release'))


def machine_busy_s():
    """CPU seconds all CPUs spent not idle, from /proc/stat."""
    with open('/proc/stat') as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')


def children_cpu_s():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def read_line(proc, timeout):
    """The next line of proc's stdout, or None if it exits or is silent for `timeout`."""
    fd, buf, deadline = proc.stdout.fileno(), b'', time.monotonic() + timeout
    while b'\n' not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        buf += chunk
    return buf.decode().strip()


class Failed(Exception):
    """A run that did not produce a result; the message is what the table shows."""


class Unsupported(Failed):
    pass


def last_line(path):
    with open(path, errors='replace') as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    return lines[-1] if lines else '(no output)'


class Server:
    """A server process: started, its `PORT n` line awaited, then SIGTERMed. `timeout`
    bounds both the start and the exit after SIGTERM (longer under valgrind)."""

    def __init__(self, cmd, timeout=30, env=None):
        self.err = tempfile.NamedTemporaryFile('w+', prefix='bench-server-', suffix='.log', delete=False)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL, env=env)
        self.timeout = timeout
        line = read_line(self.proc, timeout)
        if line and line.startswith('UNSUPPORTED '):
            self.stop()
            raise Unsupported(line[len('UNSUPPORTED '):])
        if not line or not line.startswith('PORT '):
            self.proc.kill()
            self.proc.wait()
            why = line or last_line(self.err.name)
            self.stop()
            raise Failed(f'server did not start: {why}')
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        os.unlink(self.err.name)


def server_cmd(loop, style, mode, cpu):
    if loop == CEILING:
        return [os.path.join(tools_dir(), 'echo-server'), '--mode', mode, '--port', '0', '--cpu', str(cpu)]
    return [sys.executable, os.path.join(BENCH, 'servers.py'), loop, style, '--cpu', str(cpu)]


def rss_kib(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise Failed('no VmRSS')


# ---------------------------------------------------------------- the three kinds of run

def run_micro(loop, job, s):
    n = max(1000, int(micro.WORKLOADS[job['style']][1] * s.micro_scale))
    cmd = [sys.executable, os.path.join(BENCH, 'micro.py'), loop, job['style'], '--n', str(n)]
    t0, busy0, cpu0 = time.monotonic(), machine_busy_s(), children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    busy, cpu = machine_busy_s() - busy0, children_cpu_s() - cpu0
    if proc.returncode:
        raise Failed(f'exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ["?"])[-1]}')
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if 'unsupported' in result:
        raise Unsupported(result['unsupported'])
    result['others_cpu_s'] = max(0.0, busy - cpu)
    result['others_pct'] = 100 * result['others_cpu_s'] / max(time.monotonic() - t0, 1e-3)
    return result


def server_env(s):
    return {**os.environ, **s.server_env} if s.server_env else None


def run_net(loop, job, s, cpu):
    server = Server(server_cmd(loop, job['style'], job['mode'], cpu), env=server_env(s))
    try:
        cmd = [os.path.join(tools_dir(), 'loadgen'), job['mode'], '--addr', f'127.0.0.1:{server.port}',
               '--conns', str(job['conns']), '--duration', str(s.duration),
               '--warmup', str(s.warmup), '--cpu', str(cpu), '--server-pid', str(server.pid)]
        if job['size']:  # HTTP requests have their own fixed size
            cmd += ['--size', str(job['size'])]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=s.duration + s.warmup + 60)
        if proc.returncode or not proc.stdout.strip():
            why = (proc.stderr.strip().splitlines() or ['no output'])[-1]
            if server.proc.poll() is not None:
                why += f'; server exited {server.proc.returncode}: {last_line(server.err.name)}'
            raise Failed(f'loadgen exit {proc.returncode}: {why}')
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result['others_pct'] = 100 * result['others_cpu_s'] / max(result['seconds'], 1e-3)
        return result
    finally:
        server.stop()


def socket_count(pid):
    """Sockets the process holds (its listener, accepted connections, a loop's own)."""
    n = 0
    for fd in os.listdir(f'/proc/{pid}/fd'):
        try:
            n += os.readlink(f'/proc/{pid}/fd/{fd}').startswith('socket:')
        except OSError:  # closed meanwhile
            pass
    return n


def run_memory(loop, job, s, cpu):
    """RSS of an echo server holding job['conns'] idle connections (loadgen idle)."""
    server = Server(server_cmd(loop, 'protocol', 'tcp', cpu), env=server_env(s))
    client = None
    try:
        base_rss, base_socks = rss_kib(server.pid), socket_count(server.pid)
        cmd = [os.path.join(tools_dir(), 'loadgen'), 'idle', '--addr', f'127.0.0.1:{server.port}',
               '--conns', str(job['conns']), '--cpu', str(cpu)]
        client = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = read_line(client, 120)
        if not line:
            client.kill()
            raise Failed(f'loadgen idle: {client.communicate()[1].decode().strip()[-200:] or "no output"}')
        connected = json.loads(line)['connected']
        # Accepting lags connecting (the kernel completes handshakes from the backlog):
        # wait, bounded, until the server holds a socket for each connection.
        deadline = time.monotonic() + 30
        while socket_count(server.pid) - base_socks < connected and time.monotonic() < deadline:
            time.sleep(0.05)
        accepted = socket_count(server.pid) - base_socks
        rss = rss_kib(server.pid)
        return {'connected': connected, 'accepted': accepted, 'base_rss_kib': base_rss, 'rss_kib': rss,
                'kib_per_conn': (rss - base_rss) / max(accepted, 1)}
    finally:
        if client is not None and client.poll() is None:
            client.stdin.close()
            try:
                client.wait(30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
        server.stop()


# ---------------------------------------------------------------- driver

def machine_info(loop_status):
    model = '?'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = '?'
    return {'nproc': os.cpu_count(), 'cpu_model': model, 'kernel': platform.release(),
            'python': f'{platform.python_implementation()} {platform.python_version()}',
            'loops': loop_status, 'commit': commit, 'date_utc': time.strftime('%Y-%m-%d %H:%M', time.gmtime())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true', help='fewer rounds, shorter runs, reduced matrix (< 5 min)')
    ap.add_argument('--rounds', type=int, help='rounds of every workload (default 3, quick 2)')
    ap.add_argument('--loops', default=','.join(loops.NAMES), help='comma-separated (default: all)')
    ap.add_argument('--only', help='run only jobs whose group/case/style contains this')
    ap.add_argument('--out', default=os.path.join(BENCH, 'results'))
    ap.add_argument('--cpu', type=int, default=0, help='the CPU network servers and the load generator share')
    ap.add_argument('--server-env', action='append', default=[], metavar='KEY=VALUE',
                    help="set in every network server's environment, every loop's and the ceiling's alike "
                         '(repeatable), e.g. MALLOC_TRIM_THRESHOLD_=67108864')
    args = ap.parse_args()
    if any('=' not in kv or kv.startswith('=') for kv in args.server_env):
        ap.error('--server-env takes KEY=VALUE')
    extra = dict(kv.split('=', 1) for kv in args.server_env)
    s = Settings(args.quick, args.rounds, extra)
    names = [n for n in args.loops.split(',') if n]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by loadgen idle

    status, dead = {}, {}  # dead: (loop, style) -> why every later run is skipped
    for name in names:
        ver, why = loops.probe(name)
        status[name] = ver if ver else f'unsupported: {why}'
        if why:
            dead[(name, '*')] = f'unsupported: {why}'
    tools_ok = all(os.access(os.path.join(tools_dir(), t), os.X_OK) for t in ('loadgen', 'echo-server'))
    status[CEILING] = 'ferroloop-bench echo-server' if tools_ok else 'unsupported: not built'
    if not tools_ok:
        dead[(CEILING, '*')] = dead[('*net', '*')] = (
            f'unsupported: load generator not built ({tools_dir()}; cargo build --release -p ferroloop-bench)')

    jobs = [j for j in plan(s) if not args.only or args.only in label(j)]
    runs, t_start = [], time.monotonic()
    for rnd in range(1, s.rounds + 1):
        for job in jobs:
            if job['group'] == 'memory' and rnd > s.memory_rounds:
                continue
            for loop in ([CEILING] if job['style'] == CEILING else names):
                runs.append(one_run(loop, job, rnd, s, args.cpu, dead))
        print(f'bench: round {rnd}/{s.rounds} done at {time.monotonic() - t_start:.0f} s', file=sys.stderr)
    info = {'machine': machine_info(status), 'loops': names, 'quick': s.quick, 'rounds': s.rounds,
            'duration_s': s.duration, 'warmup_s': s.warmup, 'cpu': args.cpu, 'only': args.only,
            'server_env': s.server_env,
            'elapsed_s': round(time.monotonic() - t_start, 1)}
    print(report.write(args.out, info, runs))


def one_run(loop, job, rnd, s, cpu, dead):
    rec = {'round': rnd, 'loop': loop, **job}
    net = job['group'] != 'micro'
    skip = dead.get((loop, '*')) or dead.get((loop, job['style'])) or (net and dead.get(('*net', '*')))
    if skip:
        return {**rec, 'error': skip}
    t0 = time.monotonic()
    try:
        if job['group'] == 'micro':
            rec['result'] = run_micro(loop, job, s)
        elif job['group'] == 'memory':
            rec['result'] = run_memory(loop, job, s, cpu)
        else:
            rec['result'] = run_net(loop, job, s, cpu)
    except Unsupported as exc:
        rec['error'] = dead[(loop, job['style'])] = f'unsupported: {exc}'
    except (Failed, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        rec['error'] = f'failed: {exc}'
    rec['wall_s'] = round(time.monotonic() - t0, 2)
    status = rec.get('error') or 'ok'
    print(f'bench: r{rnd} {label(job)} {loop}: {status} ({rec["wall_s"]} s)', file=sys.stderr)
    return rec


if __name__ == '__main__':
    main()
