"""The paper's metrics at a large vocabulary: 20,000 images x 5,000 labels of float32 scores, with float32 targets
(0.8 GB of inputs) and with uint8 targets (0.5 GB), sparse (about 3 positives an image, every class at least one).
`mean_ap`, `threshold_metrics` and `topk_metrics`, run once each in a fresh process (so pytest's own memory does not
count), must together take at most 10 s on this 2-core machine and raise the process's peak resident memory (VmHWM
after writing 5 to /proc/self/clear_refs, less VmRSS with the inputs in place) by at most 25 % of the inputs' bytes.
No slack factor: measured at 1.4-1.6 s (quiet, 2 threads), 2.3-2.5 s (OMP_NUM_THREADS=1) and 2.4-2.8 s (load average
about 2.5), and at 0.7-2.8 % of the inputs, the limits leave over 3x and 8x room. Their figures are checked against
simple, separate formulations: AP of a slice of classes from `np.unique` tie groups, and the set metrics from counts
over blocks of 1,000 images (a stable argsort for top-k). The synthetic data is benchmarks/bench_metrics.py's (kept
apart from it, so the test does not import the benchmark)."""
import json, os, subprocess, sys

import pytest

N, C = 20_000, 5_000
LIMIT_S, LIMIT_FRACTION = 10., 0.25

CHILD = r'''
import json, sys, time
import numpy as np
from sgre.metrics import ap_summary, mean_ap, threshold_metrics, topk_metrics
n, C, dtype = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
rng = np.random.default_rng(0)
S = rng.random((n, C), dtype=np.float32)
S[:, 7] = np.round(S[:, 7] * 20) / 20                       # a class with many tied scores
Y = np.zeros((n, C), dtype)
Y[np.repeat(np.arange(n), 3), rng.integers(0, C, 3 * n)] = 1   # about 3 positives an image
Y[rng.integers(0, n, C), np.arange(C)] = 1                  # and every class has one
pos = Y == 1
S[pos] = np.minimum(S[pos] + 0.3, 1)                        # some signal, so AP is not at chance
del pos
inputs = S.nbytes + Y.nbytes
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS')
t0 = time.perf_counter()
m = mean_ap(S, Y); t1 = time.perf_counter()
thr = threshold_metrics(S, Y, 0.5); t2 = time.perf_counter()
top = topk_metrics(S, Y, 3, 0.5); t3 = time.perf_counter()
peak = status('VmHWM') - base

# separate formulations, after the measurement
def ap_ref(s, y):
    "Interpolated AP of one class: one threshold per distinct score, from the highest down."
    s, y = s.astype(np.float64), y.astype(np.float64)
    u, inv = np.unique(-s, return_inverse=True)             # distinct scores, highest first
    tp = np.cumsum(np.bincount(inv, weights=y, minlength=len(u)))
    seen = np.cumsum(np.bincount(inv, minlength=len(u)))
    prec = tp / seen
    interp = np.maximum.accumulate(prec[::-1])[::-1]
    gain = np.diff(np.r_[0., tp])
    return float((gain * interp).sum() / tp[-1])
ap = ap_summary(S, Y)['AP']
cols = [0, 1, 7, 2345, C - 1] + list(range(100, 5000, 250))
def prf(n_pred, n_gt, n_corr):
    cp = float(np.where(n_pred > 0, n_corr / np.maximum(n_pred, 1), 0).mean())
    cr = float((n_corr / n_gt).mean())                       # every class has a positive here
    op, or_ = n_corr.sum() / n_pred.sum(), n_corr.sum() / n_gt.sum()
    return dict(CP=cp, CR=cr, CF1=2 * cp * cr / (cp + cr), OP=float(op), OR=float(or_), OF1=float(2 * op * or_ / (op + or_)))
cnt = {'thr': np.zeros((3, C)), 'top': np.zeros((3, C))}
for r in range(0, n, 1000):
    s, y = S[r:r + 1000].astype(np.float64), Y[r:r + 1000] == 1
    best = np.argsort(-s, axis=1, kind='stable')[:, :3]     # ties: the lower class first
    top3 = np.zeros_like(y); np.put_along_axis(top3, best, True, 1)
    for key, p in (('thr', s >= 0.5), ('top', top3 & (s >= 0.5))):
        cnt[key] += [p.sum(0), y.sum(0), (p & y).sum(0)]
print(json.dumps(dict(seconds=[t1 - t0, t2 - t1, t3 - t2], peak=peak, inputs=inputs, mAP=m, mAP_of_AP=float(np.mean(ap)),
                      thr=thr, top=top, thr_ref=prf(*cnt['thr']), top_ref=prf(*cnt['top']),
                      ap=[float(ap[c]) for c in cols], ap_ref=[ap_ref(S[:, c], Y[:, c]) for c in cols])))
'''


@pytest.mark.parametrize('targets', ['float32', 'uint8'])
def test_metrics_at_20000_by_5000(targets):
    r = subprocess.run([sys.executable, '-c', CHILD, str(N), str(C), targets], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    secs, peak, inputs = res['seconds'], res['peak'], res['inputs']
    print(f'{N} x {C}, {targets} targets: mean_ap {secs[0]:.2f} s, threshold_metrics {secs[1]:.2f} s, '
          f'topk_metrics {secs[2]:.2f} s (total {sum(secs):.2f} s); peak extra memory {peak / 2**20:.0f} MiB = '
          f'{peak / inputs:.1%} of the inputs ({inputs / 2**20:.0f} MiB); load average {os.getloadavg()[0]:.2f}; '
          f'OMP_NUM_THREADS={os.environ.get("OMP_NUM_THREADS", "unset")}')
    for a, b in zip(res['ap'], res['ap_ref']): assert abs(a - b) <= 1e-12, (res['ap'], res['ap_ref'])
    assert abs(res['mAP'] - res['mAP_of_AP']) <= 1e-12 and 0.3 < res['mAP'] < 1, res['mAP']
    for key in ('thr', 'top'):
        got, want = res[key], res[key + '_ref']
        assert list(got) == list(want) and all(abs(got[k] - want[k]) <= 1e-12 for k in want), (key, got, want)
    assert res['top']['OP'] != res['thr']['OP']                 # the two rules were told apart
    assert peak <= LIMIT_FRACTION * inputs, f'peak extra memory {peak / 2**20:.0f} MiB > 25 % of {inputs / 2**20:.0f} MiB'
    assert sum(secs) <= LIMIT_S, f'{sum(secs):.1f} s > {LIMIT_S} s'
