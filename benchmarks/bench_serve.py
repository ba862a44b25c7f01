"""Throughput and latency of `sgre_serve`: requests per second and p50/p99 latency at concurrency 1, 4 and 16, for
`--max-batch 1` (no batching) and `--max-batch 16` (dynamic batching, `--max-wait-ms 10`), with PyTorch and with `--onnx`.

The model folder is the tiny digits configuration of nbs/14_serve.ipynb (ResNet-10-T at 32 px, random weights, exported
with ONNX). Each server runs as its own `sgre_serve` process on 127.0.0.1 (a free port); the clients are threads of this
process, one keep-alive connection each, every request one image (`POST /predict`). After a warm-up of 8 requests, each
cell sends `--requests` requests. The load average is printed before and after: on a shared machine other processes take
CPU time from the server and the clients alike, so compare the cells of one run, not runs of different days.

Usage: python benchmarks/bench_serve.py [--requests 64] [--concurrency 1 4 16]
"""
import argparse, os, platform, re, shutil, signal, subprocess, sys, tempfile, threading, time
from pathlib import Path

import httpx
import numpy as np

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')


def tiny_model_folder(root: Path) -> tuple:   # (model folder, test images); as tests/test_serve.py builds it
    import torch
    from sgre.data import prepare_digits, read_prepared
    from sgre.deploy import export_model
    from sgre.experiment import model_options, parse_config, write_config
    from sgre.model import SGRE
    digits = prepare_digits(root / 'digits', n_train=16, n_test=16, size=32, seed=0)
    cfg, _ = parse_config(['--data', 'digits', '--data-dir', str(digits), '--arch', 'resnet10t', '--no-pretrained', '--img-size', '32',
                           '--output-stride', '8', '--embed-type', 'random', '--attn-dim', '32', '--num-heads', '2', '--num-workers', '0'])
    labels = (digits / 'label.txt').read_text().split()
    exp = root / 'experiments' / 'mlic_digits' / 'exp1'
    (exp / 'checkpoints').mkdir(parents=True)
    write_config(dict(cfg, num_classes=len(labels), labels=labels, world_size=1), exp / 'config.yaml')
    torch.manual_seed(0)
    torch.save(SGRE(cfg['arch'], len(labels), embeddings=None, **model_options(cfg, pretrained=False)).state_dict(),
               exp / 'checkpoints' / 'best_ema_model.pth')
    return export_model(exp, root / 'model', onnx=True), [Path(p) for p, _ in read_prepared(digits).test]


def start(model: Path, log: Path, *args) -> tuple:   # (process, base URL)
    cmd = [str(BIN / 'sgre_serve')] if (BIN / 'sgre_serve').exists() else [sys.executable, '-m', 'sgre.serve']
    proc = subprocess.Popen([*cmd, '--model', str(model), '--port', '0', *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, 'w'), env=ENV)
    for _ in range(1200):
        m = re.search(r'at (http://127\.0\.0\.1:\d+/)', log.read_text())
        if m: return proc, m.group(1)
        if proc.poll() is not None: break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f'sgre_serve did not start:\n{log.read_text()}')


def load(url: str, bodies: list, n: int, concurrency: int) -> tuple:   # (requests/s, p50 ms, p99 ms)
    times, errors, lock = [], [], threading.Lock()
    counter = iter(range(n))
    def client():
        with httpx.Client(base_url=url, timeout=120) as c:
            while True:
                with lock: i = next(counter, None)
                if i is None: return
                t = time.perf_counter()
                r = c.post('predict', files=[('file', bodies[i % len(bodies)])])
                dt = time.perf_counter() - t
                with lock: (times if r.status_code == 200 else errors).append(dt if r.status_code == 200 else r.status_code)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads: t.start()
    for t in threads: t.join()
    wall = time.perf_counter() - t0
    if errors or len(times) != n: sys.exit(f'{len(errors)} requests failed ({errors[:5]}), {n - len(times) - len(errors)} lost')
    return n / wall, 1000 * float(np.percentile(times, 50)), 1000 * float(np.percentile(times, 99))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--requests', type=int, default=64, help='requests per cell (default: 64)')
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16], help='client threads (default: 1 4 16)')
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    try:
        model, images = tiny_model_folder(root)
        bodies = [(p.name, p.read_bytes(), 'image/png') for p in images]
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        print(f'{platform.processor() or platform.machine()}, {cores} cores; load average before: '
              + ', '.join(f'{x:.2f}' for x in os.getloadavg()))
        rows = []
        for backend in ('PyTorch', 'onnxruntime'):
            for max_batch in (1, 16):
                args = ['--max-batch', str(max_batch), '--max-wait-ms', '10'] + (['--onnx'] if backend == 'onnxruntime' else [])
                proc, url = start(model, root / 'server.log', *args)
                try:
                    load(url, bodies, 8, 1)   # warm-up
                    for c in a.concurrency:
                        rps, p50, p99 = load(url, bodies, a.requests, c)
                        rows.append((backend, max_batch, c, rps, p50, p99))
                        print(f'  {backend} --max-batch {max_batch}, concurrency {c}: {rps:.0f} requests/s', file=sys.stderr)
                finally:
                    proc.send_signal(signal.SIGTERM); proc.wait(60)
        print('load average after: ' + ', '.join(f'{x:.2f}' for x in os.getloadavg()))
        print(f'\n| backend | --max-batch | concurrency | requests/s | p50 (ms) | p99 (ms) |\n|---|---:|---:|---:|---:|---:|')
        for b, mb, c, rps, p50, p99 in rows: print(f'| {b} | {mb} | {c} | {rps:.0f} | {p50:.1f} | {p99:.1f} |')
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
