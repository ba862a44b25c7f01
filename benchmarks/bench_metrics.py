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

`--partial` measures partially labelled data at Open Images' size: 125,000 images x 9,605 labels of float32 scores
(4.8 GB) with a `PartialLabels` of about 9 known labels per image (Open Images' test split has on average about 9
verified labels per image, about a third of them negative): 1 + Poisson(5) positives and Poisson(3) verified negatives
per image, classes drawn with probability proportional to 1/(rank + 20) (a long tail: about 6,000 positives for the most
frequent class, a dozen for the rarest; a class drawn both ways for an image stays positive), every other cell
unknown. Each function runs once in a fresh process, as for --large: time, and the rise of the peak resident memory
above the memory with the scores and labels in place, in MiB and as a share of the score matrix's bytes; also the time
of `PartialLabels.from_lists` from Python lists. `--dense` adds the dense path on the same cells (uint8 targets and
ignore mask, 2.4 GB more) for comparison. `--quick` runs a tenth of the images.

Usage: python benchmarks/bench_metrics.py [--n 100000] [--classes 81] [--repeats 5] [--skip-sklearn]
       python benchmarks/bench_metrics.py --large [--n 20000] [--classes 5000] [--targets float32,uint8]
       python benchmarks/bench_metrics.py --partial [--quick] [--dense] [--n 125000] [--classes 9605]
"""
import os, sys
if not any(a in sys.argv for a in ('--large', '--large-child', '--partial', '--partial-child')):   # --large, --partial: all cores
    for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMEXPR_NUM_THREADS'):
        os.environ[_v] = '1'

import argparse, platform, statistics, time

import numpy as np
import torch

from sgre.metrics import PartialLabels, ap_summary, mean_ap, threshold_metrics, topk_metrics, voc_ap


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


def partial_data(n: int, C: int, seed: int = 0):
    "float32 scores (n, C) and a PartialLabels of about 6 positives and 3 verified negatives per image (see --partial)."
    rng = np.random.default_rng(seed)
    S = rng.random((n, C), dtype=np.float32)
    p = 1 / (np.arange(C) + 20.); p /= p.sum()
    def cells(count):
        img = np.repeat(np.arange(n, dtype=np.int64), count)
        return np.unique(img * C + rng.choice(C, len(img), p=p))      # image * C + class, sorted, without repeats
    pos = cells(1 + rng.poisson(5, n))
    neg = cells(rng.poisson(3, n))
    neg = neg[~np.isin(neg, pos, assume_unique=True)]                 # drawn both ways: positive
    pr, pc = np.divmod(pos, C); nr, nc = np.divmod(neg, C)
    S[pr, pc] = np.minimum(S[pr, pc] + 0.3, 1)                        # some signal on the positives
    edges = np.arange(n + 1)
    return S, PartialLabels(np.searchsorted(pr, edges), pc, np.searchsorted(nr, edges), nc, C)


def partial_child(fn: str, n: int, C: int):
    import json
    S, L = partial_data(n, C)
    if fn == 'from_lists':
        pos = [L.indices[a:b][L.positive[a:b]].tolist() for a, b in zip(L.indptr[:-1], L.indptr[1:])]
        neg = [L.indices[a:b][~L.positive[a:b]].tolist() for a, b in zip(L.indptr[:-1], L.indptr[1:])]
        t = time.perf_counter(); L2 = PartialLabels.from_lists(pos, neg, C); t = time.perf_counter() - t
        assert all(np.array_equal(getattr(L, a), getattr(L2, a)) for a in ('indptr', 'indices', 'positive'))
        print(json.dumps(dict(seconds=t, peak=0, inputs=S.nbytes))); return
    dense = fn.startswith('dense ')
    Y, G = L.to_dense() if dense else (L, None)
    f = {'mean_ap': lambda: mean_ap(S, Y, G), 'threshold_metrics': lambda: threshold_metrics(S, Y, 0.5, ignore=G),
         'topk_metrics': lambda: topk_metrics(S, Y, 3, 0.5, ignore=G)}[fn.split()[-1]]
    counts = L.class_counts()
    with open('/proc/self/clear_refs', 'w') as fh: fh.write('5')
    base = _status('VmRSS')
    t = time.perf_counter(); out = f(); t = time.perf_counter() - t
    print(json.dumps(dict(seconds=t, peak=_status('VmHWM') - base, inputs=S.nbytes, known=len(L.indices),
                          positives=int(L.positive.sum()), no_pos=int((counts['positives'] == 0).sum()),
                          label_bytes=L.indptr.nbytes + L.indices.nbytes + L.positive.nbytes,
                          result=out if isinstance(out, dict) else float(out))))


def partial(a):
    import json, subprocess
    print(f'float32 scores, PartialLabels; NumPy {np.__version__}, {os.cpu_count()} cores ({cpu_name()}), '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}; load average {os.getloadavg()[0]:.2f}\n')
    rows, results = [], {}
    fns = ['mean_ap', 'threshold_metrics', 'topk_metrics'] + (['dense mean_ap', 'dense threshold_metrics',
                                                              'dense topk_metrics'] if a.dense else []) + ['from_lists']
    for fn in fns:
        out = subprocess.run([sys.executable, __file__, '--partial-child', fn, '--n', str(a.n), '--classes', str(a.classes)],
                             capture_output=True, text=True)
        if out.returncode: sys.exit(f'{fn} failed:\n{out.stderr[-3000:]}')
        r = json.loads(out.stdout.strip().splitlines()[-1]); results[fn] = r
        if 'known' in r and not rows:
            print(f"{a.n:,} images × {a.classes:,} labels: scores {r['inputs'] / 2**30:.2f} GiB; {r['known']:,} known cells "
                  f"({r['known'] / a.n:.2f} per image, {1 - r['positives'] / r['known']:.1%} of them negative), "
                  f"{r['no_pos']:,} classes without a verified positive; the PartialLabels take "
                  f"{r['label_bytes'] / 2**20:.1f} MiB (dense uint8 targets + mask: {2 * a.n * a.classes / 2**30:.2f} GiB)\n")
            print('| path | function | time (s) | peak extra memory (MiB) | of the scores |')
            print('|---|---|---:|---:|---:|')
        if fn == 'from_lists':
            print(f"\n`PartialLabels.from_lists` from {a.n:,} pairs of Python lists: {r['seconds']:.2f} s", flush=True); continue
        path = 'dense (targets + ignore, uint8)' if fn.startswith('dense') else '`PartialLabels`'
        rows.append(r)
        print(f"| {path} | `{fn.split()[-1]}` | {r['seconds']:.2f} | {r['peak'] / 2**20:.0f} | {r['peak'] / r['inputs']:.1%} |",
              flush=True)
    if a.dense:
        for fn in ('mean_ap', 'threshold_metrics', 'topk_metrics'):
            assert results[fn]['result'] == results['dense ' + fn]['result'], (fn, results[fn], results['dense ' + fn])
        print('\nThe sparse and the dense path gave the same figures (compared exactly).')
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--large', action='store_true', help='20,000 x 5,000 (set --n and --classes to change)')
    ap.add_argument('--large-child', help=argparse.SUPPRESS)
    ap.add_argument('--partial', action='store_true', help="partially labelled data at Open Images' size, 125,000 x 9,605")
    ap.add_argument('--partial-child', help=argparse.SUPPRESS)
    ap.add_argument('--dense', action='store_true', help='--partial: also the dense path on the same cells (2.4 GB more)')
    ap.add_argument('--quick', action='store_true', help='--partial: 12,500 images')
    ap.add_argument('--targets', default='float32,uint8', help='--large: the targets\' dtypes, comma-separated')
    ap.add_argument('--n', type=int, default=100_000)
    ap.add_argument('--classes', type=int, default=81)
    ap.add_argument('--repeats', type=int, default=5)
    ap.add_argument('--skip-sklearn', action='store_true', help='leave out the scikit-learn comparison')
    a = ap.parse_args()
    if a.large_child: return large_child(a.large_child, a.n, a.classes, a.targets)
    if a.partial_child: return partial_child(a.partial_child, a.n, a.classes)
    if a.partial:
        if '--n' not in sys.argv: a.n = 12_500 if a.quick else 125_000
        if '--classes' not in sys.argv: a.classes = 9_605
        return partial(a)
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
