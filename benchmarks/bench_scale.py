"""SGRE at large vocabularies: one training step at C = 80 ... 10,000 classes, 448 px.

For each number of classes C, one training step (forward, the SGRE loss, backward, AdamW) of
1. the head alone (everything after the backbone) on a ResNet-50/101 feature map at 448 px (both give
   B x 2048 x 14 x 14: N = 196 tokens, D = 2048), with the paper's A = 1024 and T = 768, in the fused
   formulation (what the default `attn_impl='auto'` runs on a CPU) and in the naive one (`attn_impl='naive'`), which materialises the
   (B, C, N, A) tensor: it runs only where its estimated memory fits `--naive-limit-gb`; elsewhere the
   table gives that tensor's size;
2. the whole model (ResNet-50 and ResNet-101 backbones, random initialisation), fused head.

Each configuration runs in a fresh process: time is the median of `--repeats` steps after one warm-up
step; peak memory is that process's high-water mark of resident memory (VmHWM) during the warm-up
and timed steps, minus its resident memory once the model and optimizer exist. The time per class is
the marginal cost, (t(C) - t(80)) / (C - 80).

Usage: python benchmarks/bench_scale.py [--batch 2] [--repeats 2] [--classes 80 500 1000 5000 10000]
       [--naive-limit-gb 12] [--skip-whole] [--threads 1]
"""
import argparse, json, os, statistics, subprocess, sys, time

N, D, A, T = 196, 2048, 1024, 768   # 448 px ResNet map: 14 x 14 tokens of 2048 channels; the paper's widths


def _status(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(part: str, impl: str, C: int, B: int, repeats: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from torch import nn
    from sgre.loss import SGRELoss
    from sgre.model import SGRE
    torch.manual_seed(0)
    if part == 'head':
        class StandIn(nn.Module): num_features = D
        model, x = SGRE(StandIn(), C, embeddings=torch.randn(C, T), attn_dim=A, pos=True, attn_impl=impl), torch.randn(B, D, 14, 14)
        run = model.forward_head
    else:
        model, x = SGRE(part, C, embeddings=torch.randn(C, T), attn_dim=A, pos=True, attn_impl=impl), torch.randn(B, 3, 448, 448)
        run = model
    model.train()
    y = (torch.rand(B, C) < 5 / C).float()
    opt, loss_fn = torch.optim.AdamW(model.parameters(), lr=1e-4), SGRELoss()

    def step():
        loss = loss_fn(run(x), y)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        return loss.item()

    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # VmHWM := VmRSS
    base = _status('VmRSS')
    step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
    return dict(seconds=statistics.median(times), peak=_status('VmHWM') - base)


def _run(part, impl, C, a) -> dict:
    out = subprocess.run([sys.executable, __file__, '--child', part, impl, str(C), '--batch', str(a.batch),
                          '--repeats', str(a.repeats), '--threads', str(a.threads)], capture_output=True, text=True)
    if out.returncode: sys.exit(f'{part} {impl} C={C} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=2)
    ap.add_argument('--repeats', type=int, default=2)
    ap.add_argument('--classes', type=int, nargs='+', default=[80, 500, 1000, 5000, 10000])
    ap.add_argument('--naive-limit-gb', type=float, default=12., help='run the naive head only where 3 (B, C, N, A) tensors fit')
    ap.add_argument('--skip-whole', action='store_true')
    ap.add_argument('--threads', type=int, default=1, help="torch threads per step (1: steadiest on a shared machine)")
    ap.add_argument('--child', nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        part, impl, C = a.child
        return print(json.dumps(child(part, impl, int(C), a.batch, a.repeats, a.threads)))
    import torch
    print(f'torch {torch.__version__}, {a.threads} thread(s), CPU; B = {a.batch}, 448 px (N = {N}, D = {D}), '
          f'A = {A}, T = {T}; median of {a.repeats} steps after a warm-up; load average {os.getloadavg()[0]:.2f}\n')
    gb, rows = 1024 ** 3, []
    parts = ['head'] + ([] if a.skip_whole else ['resnet50', 'resnet101'])
    print('| C | fused head: s/step | peak GB | naive head: s/step | peak GB | ResNet-50 model: s/step | peak GB | '
          'ResNet-101 model: s/step | peak GB |')
    print('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    res = {}
    for C in a.classes:
        r = res[C] = {'head': _run('head', 'fused', C, a)}
        tensor = a.batch * C * N * A * 4
        r['naive'] = _run('head', 'naive', C, a) if 3 * tensor <= a.naive_limit_gb * gb else dict(tensor=tensor)
        for p in parts[1:]: r[p] = _run(p, 'fused', C, a)
        cells = [f"{r['head']['seconds']:.2f}", f"{r['head']['peak'] / gb:.2f}"]
        cells += ([f"{r['naive']['seconds']:.2f}", f"{r['naive']['peak'] / gb:.2f}"] if 'seconds' in r['naive'] else
                  [f"not run: its (B, C, N, A) tensor alone is {tensor / gb:.1f} GB", ''])
        for p in ('resnet50', 'resnet101'):
            cells += [f"{r[p]['seconds']:.2f}", f"{r[p]['peak'] / gb:.2f}"] if p in r else ['', '']
        print(f'| {C:,} | ' + ' | '.join(cells) + ' |', flush=True)
    c0 = a.classes[0]
    print(f'\nmarginal time per class, (t(C) - t({c0})) / (C - {c0}), in ms:')
    print('| C | fused head | naive head | ResNet-50 model | ResNet-101 model |')
    print('|---:|---:|---:|---:|---:|')
    for C in a.classes[1:]:
        cell = lambda k: (f"{(res[C][k]['seconds'] - res[c0][k]['seconds']) / (C - c0) * 1e3:.2f}"
                          if k in res[C] and 'seconds' in res[C][k] and 'seconds' in res[c0].get(k, {}) else '')
        print(f'| {C:,} | ' + ' | '.join(cell(k) for k in ('head', 'naive', 'resnet50', 'resnet101')) + ' |')
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
