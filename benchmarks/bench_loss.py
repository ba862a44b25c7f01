"""What the unknown-label mask costs the loss on fully labelled batches.

The losses in `sgre.loss` take targets that may hold -1 (unknown) and, with `unknown='ignore'` (the default), mask
those cells. The mask is computed on every batch, also when no target is -1: deciding to skip it would need
`bool((y < 0).any())`, a device-to-host copy and wait on every step. This script measures what that costs on 0/1
targets, against a copy of the losses as they were before unknown cells existed:

- the number of PyTorch operators (aten ops, each at least one kernel launch on a GPU) in one forward + backward,
  counted with the profiler: a figure that does not depend on the machine or its load;
- the time of one forward + backward on the CPU, each variant timed interleaved with the old loss in the same loop,
  reported as the median of the ratios (so a loaded machine slows both alike; the absolute times are printed for scale
  but are not results on a shared machine).

Usage: python benchmarks/bench_loss.py [--quick] [--repeats 200]
"""
import os, sys
for _v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'): os.environ.setdefault(_v, '1')
import argparse, math, statistics, time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from sgre.loss import AsymmetricLoss, BCELoss, _f32


def asl_before(logits, targets, gamma_neg=2., gamma_pos=0., clip=0., eps=1e-5):
    "AsymmetricLoss.forward as it was before unknown cells."
    z = _f32(logits); y = targets.to(z.dtype)
    log_eps = math.log(eps)
    log_p = F.logsigmoid(z).clamp(min=log_eps)
    if clip > 0:
        p_neg = (torch.sigmoid(-z) + clip).clamp(max=1)
        log_p_neg = torch.log(p_neg).clamp(min=log_eps)
    else:
        p_neg, log_p_neg = None, F.logsigmoid(-z).clamp(min=log_eps)
    loss = y * log_p + (1 - y) * log_p_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            p = torch.sigmoid(z)
            p_neg = 1 - p if p_neg is None else p_neg
            w = torch.pow(1 - p * y - p_neg * (1 - y), gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * w
    return -loss.sum() / z.shape[0] / z.shape[1] * 1000


def bce_before(logits, targets):
    z = _f32(logits); return F.binary_cross_entropy_with_logits(z, targets.to(z.dtype))


def step(f, z, y):
    z.grad = None
    f(z, y).backward()


def n_ops(f, z, y) -> int:
    step(f, z, y)
    with profile(activities=[ProfilerActivity.CPU]) as prof: step(f, z, y)
    return sum(e.count for e in prof.key_averages() if e.key.startswith('aten::'))


def ratios(f, ref, z, y, repeats):
    "Median time ratio f / ref, timed interleaved, and the median times."
    for _ in range(5): step(f, z, y); step(ref, z, y)
    rs, tf, tr = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); step(ref, z, y); t1 = time.perf_counter(); step(f, z, y); t2 = time.perf_counter()
        tr.append(t1 - t0); tf.append(t2 - t1); rs.append((t2 - t1) / (t1 - t0))
    return statistics.median(rs), statistics.median(tf), statistics.median(tr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='two sizes, 30 repeats')
    ap.add_argument('--repeats', type=int, default=200)
    a = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [(128, 80), (128, 1000)] if a.quick else [(128, 80), (128, 1000), (32, 9605)]
    repeats = 30 if a.quick else a.repeats
    variants = [
        ('ASL γ₋=2 (the recipes)', lambda z, y: asl_before(z, y), AsymmetricLoss(), AsymmetricLoss(unknown='negative')),
        ('ASL γ=0', lambda z, y: asl_before(z, y, 0., 0.), AsymmetricLoss(0., 0.), AsymmetricLoss(0., 0., unknown='negative')),
        ('BCE', bce_before, BCELoss(), BCELoss('negative')),
    ]
    print(f'torch {torch.__version__}, 1 thread, float32 logits, 0/1 targets (about 3 % positive); '
          f'median of {repeats} interleaved forward + backward; load average {os.getloadavg()[0]:.2f}\n')
    print("| B × C | loss | aten ops: before | 'ignore' | 'negative' | time 'ignore' / before | 'negative' / before | before (µs) |")
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    torch.manual_seed(0)
    for B, C in sizes:
        z = (torch.randn(B, C) * 3).requires_grad_()
        y = (torch.rand(B, C) < 0.03).float()
        for name, before, ign, neg in variants:
            assert torch.equal(before(z, y), ign(z, y)) and torch.equal(before(z, y), neg(z, y))
            ops = [n_ops(f, z, y) for f in (before, ign, neg)]
            r_ign, _, t_ref = ratios(ign, before, z, y, repeats)
            r_neg, _, _ = ratios(neg, before, z, y, repeats)
            print(f'| {B} × {C:,} | {name} | {ops[0]} | {ops[1]} | {ops[2]} | {r_ign:.3f} | {r_neg:.3f} | {t_ref * 1e6:.0f} |',
                  flush=True)
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
