"""Inference throughput of SGRE on the CPU: the authors' formulation, the eager model, and ONNX Runtime.

Three ways to run the same network (ResNet-101 backbone, random weights, C=80 classes with random
(C, 768) label embeddings, the position code, 448 px images) on the same inputs, in this one process:

(a) naive: the eager model with `attn_impl='naive'`, the authors' formulation of the semantic-guided
    attention (the (B, C, N, A) tensor materialised and the hidden linear layer applied to it);
(b) eager: the eager model as evaluation runs it (`torch.no_grad()`, so the attention and the final
    head take the inference path of `sgre.model`);
(c) onnxruntime: the same weights exported by `sgre.model.export_onnx` and run by ONNX Runtime's CPU
    provider.

PyTorch and ONNX Runtime both use as many threads as the machine has cores. After one warm-up batch per
variant, `--rounds` rounds each time `--batches` batches of every variant in turn (finely interleaved, so
a change in the machine's load affects all three alike); the table gives images per second from the
median batch time, the process CPU time per image (all threads; less sensitive to other processes
than wall time, not insensitive), and the ratios the issue sets targets for (eager >= 1.3x naive,
onnxruntime >= 1.0x eager). The load average is printed before and after: on a shared machine other
processes take CPU time from all variants.

`--profile` also prints where each variant spends its time: PyTorch's profiler for (a) and (b), ONNX
Runtime's per-node profile summed by operator type for (c).

Usage: python benchmarks/bench_infer.py [--batch 8] [--classes 80] [--img-size 448] [--rounds 8] [--batches 1]
                                        [--threads N] [--profile]
"""
import argparse, collections, json, os, platform, statistics, tempfile, time

import numpy as np
import torch

from sgre.model import SGRE, export_onnx


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def load() -> str:
    return ', '.join(f'{x:.2f}' for x in os.getloadavg())


def build(classes, img_size):
    torch.manual_seed(0)
    model = SGRE('resnet101', num_classes=classes, embeddings=torch.randn(classes, 768), pos=True, pretrained=False,
                 img_size=img_size).eval()
    return model


def torch_runner(model, impl):
    def run(x):
        model.attention.impl = impl
        with torch.no_grad(): return model(torch.from_numpy(x)).logits.numpy()
    return run


def ort_session(path, threads, profile=False):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile: so.enable_profiling = True
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider'])


def ort_runner(sess):
    def run(x): return sess.run(['logits'], {'images': x})[0]
    return run


def rel_err(a, b): return float(np.abs(a - b).max() / np.abs(b).max())


def profile_torch(run, x, label, top=12):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof: run(x)
    print(f'\n### where {label} spends its time (PyTorch profiler, one batch)\n')
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=top))


def profile_ort(path, threads, x, top=12):
    sess = ort_session(path, threads, profile=True)
    sess.run(None, {'images': x})
    sess.run(None, {'images': x})
    trace = sess.end_profiling()
    with open(trace) as f: events = json.load(f)
    os.remove(trace)
    by_op, total = collections.Counter(), 0
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time'):
            by_op[e['args']['op_name']] += e['dur']; total += e['dur']
    print('\n### where onnxruntime spends its time (node kernel time, two batches)\n')
    print('| operator | ms | share |\n|---|---:|---:|')
    for op, us in by_op.most_common(top): print(f'| {op} | {us / 1e3:.0f} | {us / total:.0%} |')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--classes', type=int, default=80)
    ap.add_argument('--img-size', type=int, default=448)
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--batches', type=int, default=1, help='batches per variant and round')
    ap.add_argument('--threads', type=int, default=cores(), help="threads of PyTorch and ONNX Runtime (default: the machine's cores)")
    ap.add_argument('--profile', action='store_true', help='also print where each variant spends its time')
    a = ap.parse_args()
    n = a.threads
    torch.set_num_threads(n)
    import onnxruntime as ort
    print(f'{time.strftime("%Y-%m-%d")}, {platform.machine()} CPU, {cores()} cores, {n} threads, torch {torch.__version__}, '
          f'onnxruntime {ort.__version__}; load average at start: {load()}')
    model = build(a.classes, a.img_size)
    x = torch.randn(a.batch, 3, a.img_size, a.img_size).numpy()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        path = export_onnx(model, f'{d}/sgre.onnx', a.img_size)
        print(f'export_onnx: {time.perf_counter() - t:.0f} s, {path.stat().st_size / 2**20:.0f} MiB')
        sess = ort_session(path, n)
        runs = {'naive': torch_runner(model, 'naive'), 'eager': torch_runner(model, 'fused'), 'onnxruntime': ort_runner(sess)}
        ref = {k: run(x) for k, run in runs.items()}                                 # warm-up, and a check
        print(f"logits rel. err. vs eager: naive {rel_err(ref['naive'], ref['eager']):.1e}, "
              f"onnxruntime {rel_err(ref['onnxruntime'], ref['eager']):.1e}")
        wall, cpu = collections.defaultdict(list), collections.defaultdict(list)
        for _ in range(a.rounds):
            for k, run in runs.items():
                for _ in range(a.batches):
                    t, c = time.perf_counter(), time.process_time()
                    run(x)
                    wall[k].append(time.perf_counter() - t); cpu[k].append(time.process_time() - c)
        print(f'load average at end: {load()}\n')
        ips = {k: a.batch / statistics.median(v) for k, v in wall.items()}
        print(f'| {a.img_size} px, batch {a.batch}, C = {a.classes} | img/s | CPU s / img | vs naive | vs eager |')
        print('|---|---:|---:|---:|---:|')
        for k in runs:
            print(f'| {k} | {ips[k]:.2f} | {statistics.median(cpu[k]) / a.batch:.2f} | '
                  f"{ips[k] / ips['naive']:.2f}x | {ips[k] / ips['eager']:.2f}x |")
        print(f"\n(median of {a.rounds * a.batches} batches per variant; batch times, s: " +
              '; '.join(f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in wall.items()) + ')')
        if a.profile:
            profile_torch(runs['naive'], x, 'naive')
            profile_torch(runs['eager'], x, 'eager')
            profile_ort(path, n, x)


if __name__ == '__main__':
    main()
