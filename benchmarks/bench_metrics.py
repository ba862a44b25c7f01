"""Time sgre's metrics at the size of NUS-WIDE's test split, on one CPU thread.

Data: n images x C labels (default 100,000 x 81, NUS-WIDE's test split), about 2.4 positive labels
per image, float32 probabilities from logits that are higher for positives (an mAP of about 0.45,
so the rankings are neither perfect nor random), a 1% ignore mask for the masked variant. Every function runs once as a
warm-up, then `--repeats` times; the median is reported. For scale, the last row times
scikit-learn's `average_precision_score` called once per class (the non-interpolated AP).

NumPy and PyTorch are limited to one thread (the environment variables are set before NumPy is
imported), so the numbers are single-core ones.

`--large` measures instead a large vocabulary, 20,000 images x 5,000 labels of float32 scores with float32 targets
and with uint8 targets (sparse: about 3 positives an image, every class at least one), on the machine's cores (the
thread limit above is lifted; OMP_NUM_THREADS is left as it is and printed): each function once in a fresh process,
its time and the rise of that process's peak resident memory (VmHWM, after writing 5 to /proc/self/clear_refs) above
its resident memory with the inputs in place, in MiB and as a share of the inputs' bytes (scores + targets).

Usage: python benchmarks/bench_metrics.py [--n 100000] [--classes 81] [--repeats 5] [--skip-sklearn]
       python benchmarks/bench_metrics.py --large [--n 20000] [--classes 5000] [--targets float32,uint8]
"""
import os, sys
if not ('--large' in sys.argv or '--large-child' in sys.argv):   # --large: all cores
    for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS'):
        os.environ[_v] = '1'

import argparse, platform, statistics, time

import numpy as np
import torch

from sgre.metrics import ap_summary, mean_ap, threshold_metrics, topk_metrics, voc_ap


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def make_data(n, C, seed=0):
    rng = np.random.default_rng(seed)
    Y = rng.random((n, C)) < 2.4 / C
    logits = rng.normal(-2, 1.5, (n, C)) + 3 * Y
    S = (1 / (1 + np.exp(-logits))).astype(np.float32)
    G = rng.random((n, C)) < 0.01
    return S, Y.astype(np.float32), G.astype(np.float32)


def median_time(f, repeats):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return statistics.median(times)


def _status(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'): return int(line.split()[1]) * 1024


def large_child(fn: str, n: int, C: int, targets: str):
    import json
    rng = np.random.default_rng(0)
    S = rng.random((n, C), dtype=np.float32)
    Y = np.zeros((n, C), targets)
    Y[np.repeat(np.arange(n), 3), rng.integers(0, C, 3 * n)] = 1       # about 3 positives an image
    Y[rng.integers(0, n, C), np.arange(C)] = 1                         # and every class has one
    pos = Y == 1
    S[pos] = np.minimum(S[pos] + 0.3, 1)                              # some signal, so AP is not at chance
    del pos
    f = {'mean_ap': lambda: mean_ap(S, Y), 'threshold_metrics': lambda: threshold_metrics(S, Y, 0.5),
         'topk_metrics': lambda: topk_metrics(S, Y, 3, 0.5)}[fn]
    with open('/proc/self/clear_refs', 'w') as fh: fh.write('5')
    base = _status('VmRSS')
    t = time.perf_counter(); f(); t = time.perf_counter() - t
    print(json.dumps(dict(seconds=t, peak=_status('VmHWM') - base, inputs=S.nbytes + Y.nbytes)))


def large(a):
    import json, subprocess
    print(f'float32 scores, sparse 0/1 targets; NumPy {np.__version__}, {os.cpu_count()} cores ({cpu_name()}), '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}; load average {os.getloadavg()[0]:.2f}\n')
    print('| n × C | targets | function | time (s) | peak extra memory (MiB) | of the inputs |')
    print('|---|---|---|---:|---:|---:|')
    for targets in a.targets.split(','):
        total, peak = 0., 0
        for fn in ('mean_ap', 'threshold_metrics', 'topk_metrics'):
            out = subprocess.run([sys.executable, __file__, '--large-child', fn, '--n', str(a.n), '--classes', str(a.classes),
                                  '--targets', targets], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            total, peak = total + r['seconds'], max(peak, r['peak'])
            print(f"| {a.n:,} × {a.classes:,} | {targets} | `{fn}` | {r['seconds']:.2f} | {r['peak'] / 2**20:.0f} | "
                  f"{r['peak'] / r['inputs']:.1%} |", flush=True)
        print(f"| {a.n:,} × {a.classes:,} | {targets} | all three | {total:.2f} | {peak / 2**20:.0f} (largest) | "
              f"{peak / r['inputs']:.1%} |", flush=True)
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--large', action='store_true', help='20,000 x 5,000 (set --n and --classes to change)')
    ap.add_argument('--large-child', help=argparse.SUPPRESS)
    ap.add_argument('--targets', default='float32,uint8', help='--large: the targets\' dtypes, comma-separated')
    ap.add_argument('--n', type=int, default=100_000)
    ap.add_argument('--classes', type=int, default=81)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--skip-sklearn', action='store_true', help='leave out the scikit-learn comparison')
    a = ap.parse_args()
    if a.large_child: return large_child(a.large_child, a.n, a.classes, a.targets)
    if a.large:
        if '--n' not in sys.argv: a.n = 20_000
        if '--classes' not in sys.argv: a.classes = 5_000
        return large(a)
    torch.set_num_threads(1)
    S, Y, G = make_data(a.n, a.classes)
    rows = [
        ('`voc_ap` (interpolated)', lambda: voc_ap(S, Y)),
        ('`voc_ap` with an ignore mask', lambda: voc_ap(S, Y, G)),
        ('`voc_ap(interpolated=False)`', lambda: voc_ap(S, Y, interpolated=False)),
        ('`mean_ap`', lambda: mean_ap(S, Y)),
        ('`ap_summary` from torch tensors', lambda: ap_summary(torch.from_numpy(S), torch.from_numpy(Y))),
        ('`threshold_metrics` (t = 0.5)', lambda: threshold_metrics(S, Y)),
        ('`topk_metrics` (k = 3)', lambda: topk_metrics(S, Y)),
    ]
    if not a.skip_sklearn:
        from sklearn.metrics import average_precision_score
        rows.append(('scikit-learn `average_precision_score`, one call per class',
                     lambda: [average_precision_score(Y[:, c], S[:, c]) for c in range(a.classes)]))
    print(f'{cpu_name()}, {os.cpu_count()} logical CPUs visible, 1 thread; numpy {np.__version__}, torch {torch.__version__}')
    print(f'n = {a.n:,} images, C = {a.classes} labels, median of {a.repeats} runs after a warm-up; '
          f'mAP of the data: {mean_ap(S, Y):.3f}\n')
    print('| function | time (s) |')
    print('|---|---:|')
    for name, f in rows: print(f'| {name} | {median_time(f, a.repeats):.3f} |')


if __name__ == '__main__':
    main()
