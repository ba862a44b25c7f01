"""Operators per training step of SGRE's head, per attention implementation: what a GPU would launch.

On a GPU every operator that computes something is at least one kernel launch, which costs microseconds
of CPU time whatever its size; a step of a small batch made of many small operators is bound by those
launches, not by arithmetic. Operator counts do not depend on the machine's load (nor, below, on the
numbers in the tensors), so they can be measured on a CPU:

- the head (everything after the backbone: encoder, semantic-guided attention, heads) of a ResNet-101
  at 448 px: N = 196 tokens of D = 2048 channels, A = 1024, T = 768, with the position code;
- one training step: `forward_head`, the sum of both logits as the loss, backward; one warm-up step first;
- implementations: 'naive' (the paper's formulation: the (B, C, N, A) tensor), 'fused' (what
  `attn_impl='auto'` runs on a CPU: one class at a time), 'blocked' (what it runs on a GPU, forced here
  with `attn_policy('cuda')`: blocks of k classes, k from the 256 MiB budget of one (k, B*N, A) block);
- two counts per step: `torch.profiler`'s aten:: events (every operator call, nested ones included,
  views and allocations too), and the operators that reach a backend kernel, counted with a
  TorchDispatchMode, without views and allocations (empty*): about the number of kernel launches.

The naive formulation runs only where three of its (B, C, N, A) float32 tensors fit `--naive-limit-gb`;
its counts do not depend on B (`--check-batch` shows it), so where B does not fit it runs at B = 1
(marked), and where even that does not fit the table says so.

Usage: python benchmarks/bench_head_ops.py [--quick] [--batch 2] [--classes 80 1000 10000]
       [--naive-limit-gb 6] [--check-batch] [--threads 2]
"""
import argparse, math, os

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from sgre.model import SGRE, _BLOCK_BYTES, _classes_per_block, attn_policy

N, D, A, T = 196, 2048, 1024, 768      # 448 px ResNet-101 map (14 x 14), the paper's attention width and BERT's T
ALLOCATIONS = {'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided'}


class StandIn(nn.Module):
    "The backbone's place: the head runs on a given map."
    num_features = D


class KernelOps(TorchDispatchMode):
    "Count the operators that reach a backend, without views and allocations."
    def __init__(self):
        super().__init__()
        self.count = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket.__name__ not in ALLOCATIONS: self.count += 1
        return func(*args, **(kwargs or {}))


def step(model, fmap):
    out = model.forward_head(fmap)
    (out.logits.sum() + out.sem_logits.sum()).backward()


def counts(C: int, impl: str, B: int) -> dict:
    torch.manual_seed(0)
    model = SGRE(StandIn(), C, embeddings=torch.randn(C, T), attn_dim=A, pos=True,
                 attn_impl='naive' if impl == 'naive' else 'auto').train()
    fmap = torch.randn(B, D, 14, 14)
    with attn_policy('cuda' if impl == 'blocked' else 'cpu'):
        step(model, fmap)                                           # warm-up: caches, gradient buffers
        model.zero_grad(set_to_none=False)
        with profile(activities=[ProfilerActivity.CPU]) as prof: step(model, fmap)
        events = sum(e.name.startswith('aten::') for e in prof.events())
        model.zero_grad(set_to_none=False)
        with KernelOps() as k: step(model, fmap)
    return dict(events=events, kernels=k.count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='C = 80 and 1,000 only, no batch check')
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--classes', type=int, nargs='+', default=[80, 1000, 10000])
    ap.add_argument('--naive-limit-gb', type=float, default=6., help='run naive only where 3 (B, C, N, A) tensors fit')
    ap.add_argument('--check-batch', action='store_true', help='also count at B = 1 and 4 for the first C')
    ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    if a.quick: a.classes = [c for c in a.classes if c <= 1000] or a.classes[:1]
    torch.set_num_threads(a.threads)
    B, gb = a.batch, 2 ** 30
    print(f'torch {torch.__version__}, CPU; head of a 448 px ResNet-101 (N = {N}, D = {D}), A = {A}, T = {T}, '
          f'B = {B}; block budget {_BLOCK_BYTES / 2 ** 20:.0f} MiB; load average {os.getloadavg()[0]:.2f}\n', flush=True)
    print('| C | implementation | classes per block | blocks | aten:: events (profiler) | kernel ops | '
          'kernel ops / naive at C = 80 |')
    print('|---:|---|---:|---:|---:|---:|---:|')
    base = None
    for C in a.classes:
        for impl in ('naive', 'fused', 'blocked'):
            k = {'naive': C, 'fused': 1, 'blocked': _classes_per_block(C, B * N, A, 4)}[impl]
            b, note = B, ''
            if impl == 'naive':
                fits = lambda bb: 3 * bb * C * N * A * 4 <= a.naive_limit_gb * gb
                if not fits(B):
                    b, note = 1, ' (at B = 1)'
                    if not fits(1):
                        print(f'| {C:,} | naive | | | not run: its (B, C, N, A) tensor alone is {B * C * N * A * 4 / gb:.1f} GB '
                              f'at B = {B} | | |', flush=True)
                        continue
            r = counts(C, impl, b)
            if impl == 'naive' and base is None: base = r['kernels']
            ratio = f"{r['kernels'] / base:.2f}" if base else ''
            print(f"| {C:,} | {impl}{note} | {k} | {math.ceil(C / k)} | {r['events']:,} | {r['kernels']:,} | {ratio} |",
                  flush=True)
    if a.check_batch:
        C = a.classes[0]
        print(f'\nbatch check at C = {C} (kernel ops / aten:: events):')
        for impl in ('naive', 'fused', 'blocked'):
            cells = []
            for b in (1, B, 4):
                r = counts(C, impl, b)
                cells.append(f"B = {b}: {r['kernels']:,} / {r['events']:,} "
                             f"({math.ceil(C / _classes_per_block(C, b * N, A, 4)) if impl == 'blocked' else '-'} blocks)")
            print(f'- {impl}: ' + '; '.join(cells))
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
