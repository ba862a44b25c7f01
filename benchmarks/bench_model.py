"""Speed and memory of SGRE's fused semantic-guided attention against the original formulation.

All variants run in this one process on the same weights and the same inputs; only
`model.attention.impl` changes ('naive': the (B, C, N, A) tensor is materialised and the hidden
linear layer applied to it; 'fused': the folded computation of `sgre.model`, one class at a time,
which `attn_impl='auto'` runs on a CPU; 'blocked': the same in blocks of classes within a 256 MiB
budget, which 'auto' runs on a GPU, measured here on the CPU to show why the CPU keeps 'fused').

1. Head: forward + backward of everything after the backbone (train mode) at the paper's COCO
   size, B=4, C=80, N=196 (448 px, stride 32), D=2048, A=1024, T=768.
   Time: median over `--repeats` rounds after a warm-up step of each; a round times one step of each
   variant in turn (interleaved, so that a change in the machine's load touches all of them alike).
   Memory: peak growth of the resident set during one step after a warm-up step, so weights and
   gradient buffers (allocated by the warm-up) are not counted. It is measured in a child process
   in which glibc serves every allocation of 64 KiB or more with mmap (MALLOC_MMAP_THRESHOLD_), so
   freed tensors leave the resident set at once and the peak reflects live memory. (That setting
   slows allocation-heavy code, so no time is measured in that process.)
2. Whole model with a ResNet-101 backbone: forward (eval, no grad) at 448 px, with the backbone in
   channels-last layout (the library's default) and in NCHW layout.

Usage: python benchmarks/bench_model.py [--batch 4] [--repeats 3] [--skip-full] [--quick] [--threads T]
       (--quick: the head only, 3 rounds)
"""
import argparse, json, os, statistics, subprocess, sys, threading, time

import torch
from torch import nn

from sgre.model import SGRE

_PAGE = os.sysconf('SC_PAGE_SIZE')


def rss() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    "Sample the resident set every 0.5 ms in a thread; `peak - start` is the growth."
    def __enter__(self):
        self.start = self.peak = rss()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self
    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.0005)
    def __exit__(self, *a):
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, rss())
    @property
    def growth(self): return self.peak - self.start


class StandIn(nn.Module):
    "A backbone stand-in for head-only runs: `forward_head` is called on a given map."
    num_features = 2048


def head_step(model, fmap):
    out = model.forward_head(fmap)
    (out.logits.sum() + out.sem_logits.sum()).backward()
    model.zero_grad(set_to_none=False)


def _head_model():
    torch.manual_seed(0)
    return SGRE(StandIn(), num_classes=80, embeddings=torch.randn(80, 768), pos=True).train()


def _free_attention(model):
    "Replace the attention scores by constants: no memory, no time — the bound for any implementation."
    def scores(x, e): return x.new_zeros(x.shape[0], e.shape[0], x.shape[1]) + 0 * model.attention.target_linear.bias
    model.attention.scores = scores


def head_memory(B):
    "Peak RSS growth (bytes) of one head step per implementation; run with MALLOC_MMAP_THRESHOLD_ set."
    model, fmap, res = _head_model(), torch.randn(B, 2048, 14, 14), {}
    for impl in ('naive', 'fused', 'blocked', 'free'):
        if impl == 'free': _free_attention(model)
        else: model.attention.impl = impl
        head_step(model, fmap)                                   # warm-up: allocates gradient buffers
        with PeakRSS() as mem: head_step(model, fmap)
        res[impl] = mem.growth
    return res


def head_time(B, repeats, impls=('naive', 'fused', 'blocked')):
    "Median step time per implementation, the implementations interleaved step by step."
    model, fmap, times = _head_model(), torch.randn(B, 2048, 14, 14), {impl: [] for impl in impls}
    for impl in impls:                                           # warm-up
        model.attention.impl = impl
        head_step(model, fmap)
    for _ in range(repeats):
        for impl in impls:
            model.attention.impl = impl
            t = time.perf_counter(); head_step(model, fmap); times[impl].append(time.perf_counter() - t)
    return {impl: statistics.median(ts) for impl, ts in times.items()}


def count_flops(B):
    "Matrix-product FLOPs (PyTorch's FlopCounterMode) of the backbone and of each head, forward."
    from torch.utils.flop_counter import FlopCounterMode
    torch.manual_seed(0)
    model = SGRE('resnet101', num_classes=80, embeddings=torch.randn(80, 768), pos=True).eval()
    res = {}
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc: fmap = model.forward_features(torch.randn(B, 3, 448, 448))
        res['backbone'] = fc.get_total_flops()
        for impl in ('naive', 'fused'):
            model.attention.impl = impl
            with FlopCounterMode(display=False) as fc: model.forward_head(fmap)
            res[impl] = fc.get_total_flops()
    return res


def bench_full(B, repeats, channels_last=True):
    torch.manual_seed(0)
    model = SGRE('resnet101', num_classes=80, embeddings=torch.randn(80, 768), pos=True,
                 channels_last=channels_last).eval()
    x = torch.randn(B, 3, 448, 448)
    res = {}
    with torch.no_grad():
        for impl in ('naive', 'fused'):
            model.attention.impl = impl
            model(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter(); model(x); times.append(time.perf_counter() - t)
            res[impl] = statistics.median(times)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--skip-full', action='store_true', help='only the head benchmark')
    ap.add_argument('--quick', action='store_true', help='only the head benchmark, 3 rounds')
    ap.add_argument('--threads', type=int, default=None,
                    help="torch threads (default: PyTorch's); 1 is steadiest on a machine other work shares")
    ap.add_argument('--memory-child', action='store_true', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick: a.skip_full, a.repeats = True, 3
    if a.threads: torch.set_num_threads(a.threads)
    if a.memory_child:
        print(json.dumps(head_memory(a.batch)))
        return
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='65536')
    child = subprocess.run([sys.executable, __file__, '--memory-child', '--batch', str(a.batch)]
                           + (['--threads', str(a.threads)] if a.threads else []),
                           env=env, capture_output=True, text=True, check=True)
    mem = json.loads(child.stdout.strip().splitlines()[-1])
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, batch {a.batch}, '
          f'load average {os.getloadavg()[0]:.2f}\n')
    h = head_time(a.batch, a.repeats)
    mib = {k: v / 2**20 for k, v in mem.items()}
    rows = [('head fwd+bwd, time (s)', h['naive'], h['fused'], h['blocked']),
            ('head fwd+bwd, peak RSS growth (MiB)', mib['naive'], mib['fused'], mib['blocked']),
            ('  bound: same step with attention costing nothing (MiB)', mib['naive'], mib['free'], None)]
    if not a.skip_full:
        f = bench_full(a.batch, a.repeats)
        rows.append(('ResNet-101 model fwd @448, time (s)', f['naive'], f['fused'], None))
        f = bench_full(a.batch, a.repeats, channels_last=False)
        rows.append(('same, backbone in NCHW layout, time (s)', f['naive'], f['fused'], None))
        fl = count_flops(a.batch)
        rows.append(('  bound: ResNet-101 model fwd @448, GFLOP', (fl['backbone'] + fl['naive']) / 1e9,
                     (fl['backbone'] + fl['fused']) / 1e9, None))
    print('| measurement | original (naive) | fused (auto on a CPU) | naive / fused | blocked (auto on a GPU) | naive / blocked |')
    print('|---|---:|---:|---:|---:|---:|')
    for name, n, fu, bl in rows:
        cells = [f'{n:.2f}', f'{fu:.2f}', f'{n / fu:.1f}x'] + ([f'{bl:.2f}', f'{n / bl:.1f}x'] if bl else ['', ''])
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
