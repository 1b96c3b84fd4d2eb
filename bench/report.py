"""Turns the raw runs of run.py into results.md (a table per group: median,
min–max and ratio to uvloop), results.json (the machine, the settings and every raw
run) and ratios.png (the ratios to uvloop, drawn with matplotlib when installed).

A loop or feature that could not run keeps its cell, with the reason, so nothing
disappears from a table silently.
"""
import json
import os
import statistics
import sys

from loops import BASELINE

CEILING = 'rust'


def write(out_dir, info, runs):
    """Write the three files; returns the Markdown (run.py prints it)."""
    os.makedirs(out_dir, exist_ok=True)
    chart = os.path.join(out_dir, 'ratios.png')
    chart_note = draw_chart(chart, info, runs)
    md = markdown(info, runs, chart_note)
    with open(os.path.join(out_dir, 'results.md'), 'w') as f:
        f.write(md)
    with open(os.path.join(out_dir, 'results.json'), 'w') as f:
        json.dump({**info, 'command': command(), 'runs': runs}, f, indent=1)
    return md


def command():
    return 'bash bench/run.sh ' + ' '.join(sys.argv[1:])


# ---------------------------------------------------------------- aggregation

class Cell:
    """The runs of one (group, case, style, loop): successful results and errors."""

    def __init__(self):
        self.results, self.errors = [], []

    def values(self, key):
        return [r[key] for r in self.results if r.get(key) is not None]

    def med(self, key):
        v = self.values(key)
        return statistics.median(v) if v else None

    def span(self, key):
        v = self.values(key)
        return (min(v), max(v)) if v else None

    def problem(self):
        """Why there is no number, or a note of failed runs beside the number."""
        if not self.errors:
            return ''
        if not self.results:
            return short(self.errors[0])
        return f' ({len(self.errors)} of {len(self.errors) + len(self.results)} runs failed: {short(self.errors[0])})'


def short(text, limit=120):
    return text if len(text) <= limit else text[:limit - 1] + '…'


def collect(runs):
    """(group, case, style, loop) -> Cell, in the order the runs were made."""
    cells = {}
    for r in runs:
        cell = cells.setdefault((r['group'], r['case'], r['style'], r['loop']), Cell())
        if 'result' in r:
            cell.results.append(r['result'])
        else:
            cell.errors.append(r['error'])
    return cells


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_ratio(x):
    return '—' if x is None else f'{x:.2f}'


def fmt_rate(x):
    if x is None:
        return '—'
    for div, unit in ((1e6, 'M'), (1e3, 'k')):
        if x >= div:
            return f'{x / div:.3g}{unit}'
    return f'{x:.3g}'


def fmt_pct(values):
    return f'{max(values):.0f}' if values else '—'


def fmt_num(x, digits=3):
    if x is None:
        return '—'
    return f'{x:.0f}' if abs(x) >= 10 ** digits else f'{x:.{digits}g}'


def spread(cell, key, fmt):
    lo_hi = cell.span(key)
    return f'{fmt(cell.med(key))} [{fmt(lo_hi[0])}–{fmt(lo_hi[1])}]' if lo_hi else '—'


def ordered(cells, group):
    """Distinct cases, styles and loops of a group, in run order."""
    keys = [k for k in cells if k[0] == group]
    uniq = lambda i: list(dict.fromkeys(k[i] for k in keys))
    return uniq(1), uniq(2), uniq(3), keys


# ---------------------------------------------------------------- Markdown

def each_cell(cells, group, base_style=None):
    """(case, style, loop, cell, uvloop's cell, the ceiling's cell) in table order;
    uvloop's is of the same style unless base_style names the one to compare with."""
    cases, styles, names, _ = ordered(cells, group)
    for case in cases:
        ceiling = cells.get((group, case, CEILING, CEILING))
        for style in styles:
            base = cells.get((group, case, base_style or style, BASELINE))
            for name in names:
                cell = cells.get((group, case, style, name))
                if cell is not None:
                    yield case, style, name, cell, base, ceiling


def server_name(style):
    return 'Rust echo-server (ceiling)' if style == CEILING else style


def problem_row(lead, cell, columns):
    """A row whose runs all failed: the reason, then `columns` - 1 empty cells."""
    return f'{lead} {cell.problem()} |' + ' |' * (columns - 1)


def markdown(info, runs, chart_note):
    cells = collect(runs)
    m = info['machine']
    out = ['# ferroloop benchmarks', '',
           f"`{command()}` — {m['date_utc']} UTC, commit {m['commit']}, {info['rounds']} interleaved rounds"
           f" ({'quick' if info['quick'] else 'full'}: network runs {info['duration_s']} s after"
           f" {info['warmup_s']} s warm-up), {info['elapsed_s']:.0f} s in all.", '',
           f"Machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, {m['python']}.", '',
           *([f"Network servers ran with {' '.join(f'{k}={v}' for k, v in info['server_env'].items())}"
              ' in their environment.', ''] if info.get('server_env') else []),
           'Loops: ' + ', '.join(f'{k} {v}' for k, v in m['loops'].items()) + '.', '',
           f'Every ratio is to {BASELINE} in the same run; ↑ marks a column where higher is better,'
           ' ↓ one where lower is better. "others %" is the CPU the rest of the machine used during'
           ' the run, in % of one CPU (the worst of the rounds; all CPUs busy = nproc × 100): a large value'
           ' marks a noisy row.', '']
    out += micro_table(cells)
    for group, title in (('echo', 'TCP echo'), ('http', 'HTTP/1.1 keep-alive hello world'), ('udp', 'UDP ping-pong')):
        out += net_table(cells, group, title)
    out += split_table(cells)
    out += memory_table(cells)
    out += ['', chart_note, '']
    return '\n'.join(out)


def micro_table(cells):
    cases, _, names, _ = ordered(cells, 'micro')
    if not cases:
        return []
    out = ['## Micro workloads: scheduling, TLS echo, spawn (operations per CPU-second ↑, median [min–max] ×uvloop)', '',
           'CPU time of the whole benchmark process (all its threads) for the timed part;'
           ' wall-clock ops/s are in results.json.', '',
           '| workload | ' + ' | '.join(names) + ' | others % ↓ (max) |',
           '|---|' + '---|' * (len(names) + 1)]
    for case in cases:
        row, noise = [], []
        base = cells.get(('micro', case, case, BASELINE))
        base_med = base.med('ops_per_cpu_s') if base else None
        for name in names:
            cell = cells.get(('micro', case, case, name))
            if not cell or not cell.results:
                row.append(cell.problem() if cell else '—')
                continue
            noise += cell.values('others_pct')
            vs_base = fmt_ratio(ratio(cell.med('ops_per_cpu_s'), base_med))
            row.append(f"{spread(cell, 'ops_per_cpu_s', fmt_rate)} ×{vs_base}{cell.problem()}")
        out.append(f'| {case} | ' + ' | '.join(row) + f' | {fmt_pct(noise)} |')
    return out + ['']


def net_table(cells, group, title):
    if not ordered(cells, group)[0]:
        return []
    out = [f'## {title}', '',
           '| case | server | loop | req/s ↑ median [min–max] | ×uvloop ↑ | ×ceiling ↑ | p50 / p99 µs ↓ |'
           ' server CPU µs/req ↓ [min–max] | ×uvloop ↓ | ×ceiling ↓ | others % ↓ (max) |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
    for case, style, name, cell, base, ceiling in each_cell(cells, group):
        lead = f'| {case} | {server_name(style)} | {name} |'
        if not cell.results:
            out.append(problem_row(lead, cell, 8))
            continue
        rps, cpu = cell.med('rps'), cell.med('server_cpu_us_per_req')
        noise = cell.values('others_pct')
        out.append(
            f"{lead} {spread(cell, 'rps', fmt_rate)}{cell.problem()}"
            f" | {fmt_ratio(ratio(rps, base and base.med('rps')))}"
            f" | {fmt_ratio(ratio(rps, ceiling and ceiling.med('rps')))}"
            f" | {fmt_num(cell.med('p50_us'))} / {fmt_num(cell.med('p99_us'))}"
            f" | {spread(cell, 'server_cpu_us_per_req', lambda x: fmt_num(x, 3))}"
            f" | {fmt_ratio(ratio(cpu, base and base.med('server_cpu_us_per_req')))}"
            f" | {fmt_ratio(ratio(cpu, ceiling and ceiling.med('server_cpu_us_per_req')))}"
            f" | {fmt_pct(noise)} |")
    return out + ['']


def split_table(cells):
    """What writing the HTTP reply as header + body costs each loop."""
    cases, _, names, _ = ordered(cells, 'http')
    rows = []
    for case in cases:
        for name in names:
            one, split = cells.get(('http', case, 'http_one', name)), cells.get(('http', case, 'http_split', name))
            if not one or not split or not one.results or not split.results:
                continue
            drop = ratio(split.med('rps'), one.med('rps'))
            cost = ratio(split.med('server_cpu_us_per_req'), one.med('server_cpu_us_per_req'))
            rows.append(f"| {case} | {name} | {fmt_rate(one.med('rps'))} | {fmt_rate(split.med('rps'))}"
                        f" | {'—' if drop is None else f'{(1 - drop) * 100:+.1f} %'}"
                        f" | {'—' if cost is None else f'{(cost - 1) * 100:+.1f} %'} |")
    if not rows:
        return []
    return ['## HTTP: cost of header + body as two writes', '',
            '| case | loop | one write req/s | split req/s | req/s lost ↓ | server CPU/req added ↓ |',
            '|---|---|---|---|---|---|'] + rows + ['']


def memory_table(cells):
    cases = ordered(cells, 'memory')[0]
    if not cases:
        return []
    out = [f'## Memory: server RSS with {cases[0]} connections (Protocol echo server)', '',
           '| server | loop | RSS before MiB | RSS with connections MiB ↓ [min–max] | KiB per connection ↓ |'
           ' ×uvloop ↓ | sockets added |', '|---|---|---|---|---|---|---|']
    mib = lambda x: fmt_num(None if x is None else x / 1024, 3)
    for _, style, name, cell, base, _ in each_cell(cells, 'memory', base_style='protocol'):
        lead = f'| {server_name(style)} | {name} |'
        if not cell.results:
            out.append(problem_row(lead, cell, 5))
            continue
        out.append(f"{lead} {mib(cell.med('base_rss_kib'))} | {spread(cell, 'rss_kib', mib)}{cell.problem()}"
                   f" | {fmt_num(cell.med('kib_per_conn'))}"
                   f" | {fmt_ratio(ratio(cell.med('rss_kib'), base and base.med('rss_kib')))}"
                   f" | {fmt_num(cell.med('accepted'), 6)} |")
    return out + ['']


# ---------------------------------------------------------------- chart

def chart_rows(cells):
    """Three panels of (label, {loop: ratio}), every ratio oriented so > 1 beats uvloop."""
    panels = {'Micro: ops per CPU-second ÷ uvloop': [], 'Network: req/s ÷ uvloop': [],
              'Network and memory: uvloop cost ÷ loop cost (server CPU/req; RSS)': []}
    throughput, net_rps, cost = panels.values()
    for (group, case, style, name), cell in cells.items():
        if name == BASELINE or not cell.results:
            continue
        base = cells.get((group, case, 'protocol' if style == CEILING else style, BASELINE))
        if not base or not base.results:
            continue
        if group == 'micro':
            throughput.append((case, name, ratio(cell.med('ops_per_cpu_s'), base.med('ops_per_cpu_s'))))
        elif group == 'memory':
            cost.append((f'RSS {case}', name, ratio(base.med('rss_kib'), cell.med('rss_kib'))))
        elif style != CEILING:
            row = f'{group} {style} {case}'
            net_rps.append((row, name, ratio(cell.med('rps'), base.med('rps'))))
            cost.append((row, name, ratio(base.med('server_cpu_us_per_req'), cell.med('server_cpu_us_per_req'))))
    return panels


RATIO_TICKS = [0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1, 1.2, 1.5, 2, 3, 5, 10, 20, 50]


def draw_chart(path, info, runs):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f'Chart not drawn: matplotlib is not installed ({exc}).'
    panels = {t: rows for t, rows in chart_rows(collect(runs)).items() if rows}
    if not panels:
        return 'Chart not drawn: no ratios to uvloop (is uvloop installed and part of the run?).'
    names = [n for n in info['loops'] + [CEILING] if n != BASELINE]
    colors = dict(zip(names, plt.rcParams['axes.prop_cycle'].by_key()['color']))
    heights = [len(dict.fromkeys(r[0] for r in rows)) for rows in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.5 + 0.11 * sum(heights) * len(names)),
                             gridspec_kw={'height_ratios': heights}, squeeze=False)
    bar = 0.8 / len(names)
    ticks = matplotlib.ticker
    for ax, (title, rows) in zip(axes[:, 0], panels.items()):
        labels = list(dict.fromkeys(r[0] for r in rows))
        for i, name in enumerate(names):
            got = {r[0]: r[2] for r in rows if r[1] == name and r[2]}
            if got:
                ys = [j + i * bar for j, lab in enumerate(labels) if lab in got]
                ax.barh(ys, [got[lab] for lab in labels if lab in got], height=bar, label=name, color=colors[name])
        ax.set_yticks([j + bar * (len(names) - 1) / 2 for j in range(len(labels))], labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale('log')
        ax.xaxis.set_major_locator(ticks.FixedLocator(RATIO_TICKS))
        ax.xaxis.set_major_formatter(ticks.FuncFormatter(lambda x, _: f'{x:g}'))
        ax.xaxis.set_minor_formatter(ticks.NullFormatter())
        ax.axvline(1.0, color='black', linewidth=0.8)
        ax.grid(axis='x', linewidth=0.3)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc='lower right')
    fig.suptitle(f"ratios to uvloop (> 1: better than uvloop) — {info['machine']['cpu_model']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f'Chart: `{os.path.basename(path)}` (log scale, > 1 is better than uvloop).'
