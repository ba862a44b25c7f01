"""The paper's metrics at a large vocabulary: 20,000 images x 5,000 labels of float32 scores and float32 targets
(0.8 GB of inputs). `mean_ap`, `threshold_metrics` and `topk_metrics` together must take at most 10 s on 2 cores and
raise the process's peak resident memory by at most 25 % of the inputs, and give the figures of single-block
computations exactly."""
import json, os, subprocess, sys

N, C = 20_000, 5_000
LIMIT_S, LIMIT_FRACTION = 10., 0.25

CHILD = r'''
import json, sys, time
import numpy as np
from sgre.metrics import ap_summary, mean_ap, threshold_metrics, topk_metrics, voc_ap
n, C = int(sys.argv[1]), int(sys.argv[2])
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
rng = np.random.default_rng(0)
S = rng.random((n, C), dtype=np.float32)
Y = np.zeros((n, C), np.float32)
rows = np.repeat(np.arange(n), 3)
Y[rows, rng.integers(0, C, 3 * n)] = 1                       # about 3 positives an image
Y[rng.integers(0, n, C), np.arange(C)] = 1                  # and every class has one
S[Y == 1] = np.minimum(S[Y == 1] + 0.3, 1)                  # some signal, so AP is not at chance
inputs = S.nbytes + Y.nbytes
open('/proc/self/clear_refs', 'w').write('5')
base = status('VmRSS')
t0 = time.perf_counter()
m = mean_ap(S, Y); t1 = time.perf_counter()
thr = threshold_metrics(S, Y, 0.5); t2 = time.perf_counter()
top = topk_metrics(S, Y, 3, 0.5); t3 = time.perf_counter()
peak = status('VmHWM') - base
# the same figures from single blocks (one class at a time for AP; plain full-table counts for the set metrics)
cols = [0, 1, 2345, C - 1]
ap = ap_summary(S, Y)['AP']
ap_single = [float(voc_ap(S[:, [c]].astype(np.float64), Y[:, [c]].astype(np.float64))[0]) for c in cols]
pred = S >= 0.5
n_pred, n_gt, n_correct = pred.sum(0).astype(float), Y.sum(0).astype(float), (pred & (Y == 1)).sum(0).astype(float)
cp = np.divide(n_correct, n_pred, out=np.zeros(C), where=n_pred > 0).mean()
op = n_correct.sum() / n_pred.sum()
print(json.dumps(dict(seconds=[t1 - t0, t2 - t1, t3 - t2], peak=peak, inputs=inputs, mAP=m, thr=thr, top=top,
                      ap=[float(ap[c]) for c in cols], ap_single=ap_single, cp=cp, op=op, cr=(n_correct / n_gt).mean())))
'''


def test_metrics_at_20000_by_5000():
    r = subprocess.run([sys.executable, '-c', CHILD, str(N), str(C)], capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'})   # the 2 cores
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    secs, peak, inputs = res['seconds'], res['peak'], res['inputs']
    print(f'{N} x {C}: mean_ap {secs[0]:.2f} s, threshold_metrics {secs[1]:.2f} s, topk_metrics {secs[2]:.2f} s '
          f'(total {sum(secs):.2f} s); peak extra memory {peak / 2**20:.0f} MiB = {peak / inputs:.1%} of the inputs '
          f'({inputs / 2**20:.0f} MiB); load average {os.getloadavg()[0]:.2f}')
    assert res['ap'] == res['ap_single'], (res['ap'], res['ap_single'])
    assert abs(res['thr']['CP'] - res['cp']) <= 1e-12 and abs(res['thr']['OP'] - res['op']) <= 1e-12, res
    assert abs(res['thr']['CR'] - res['cr']) <= 1e-12, res
    assert 0 < res['top']['OP'] <= 1 and 0.1 < res['mAP'] < 1, res   # above chance (about 3 / 20,000): the positives score higher
    assert peak <= LIMIT_FRACTION * inputs, f'peak extra memory {peak / 2**20:.0f} MiB > 25 % of {inputs / 2**20:.0f} MiB'
    assert sum(secs) <= LIMIT_S, f'{sum(secs):.1f} s > {LIMIT_S} s'
