"""Two parts. Throughput and latency of `sgre_serve`: requests per second and p50/p99 latency at concurrency 1, 4 and 16, for
`--max-batch 1` (no batching) and `--max-batch 16` (dynamic batching, `--max-wait-ms 10`), with PyTorch and with `--onnx`.
Memory under a burst of large images: 16 concurrent requests, each one image just under `--max-pixels` (the default,
40 M pixels), the server's resident memory (VmRSS) sampled every 50 ms, `/health` polled every 100 ms; for each way of
decoding and giving memory back that was considered, then for the chosen one (sgre_serve's defaults) with PNG (RGB, RGBA)
and JPEG images.

The model folder is the tiny digits configuration of nbs/14_serve.ipynb (ResNet-10-T at 32 px, random weights, exported
with ONNX). Each server runs as its own `sgre_serve` process on 127.0.0.1 (a free port); the clients are threads of this
process, one keep-alive connection each. Throughput: every request one image (`POST /predict`); after a warm-up of 8
requests, each cell sends `--requests` requests. The load average is printed before and after: on a shared machine other
processes take CPU time from the server and the clients alike, so compare the cells of one run, not runs of different days.
The memory figures (MB above the idle server) do not depend on the load; the seconds do.

Usage: python benchmarks/bench_serve.py [--part throughput|memory|all] [--requests 64] [--concurrency 1 4 16] [--pixels N]
       [--quick]   (--quick: 16 requests per cell, concurrency 1 and 16; memory: 10 M pixel images, two ways only)
"""
import argparse, io, os, platform, re, shutil, signal, subprocess, sys, tempfile, threading, time
from collections import Counter
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


def start(model: Path, log: Path, *args, prelude: str = '', env: dict | None = None) -> tuple:   # (process, base URL)
    "`sgre_serve` on a free port; `prelude`: Python run in the server's process first (a way of decoding to compare)."
    if prelude: cmd = [sys.executable, '-c', prelude + '\nfrom sgre.serve import sgre_serve_cli; sgre_serve_cli()']
    else: cmd = [str(BIN / 'sgre_serve')] if (BIN / 'sgre_serve').exists() else [sys.executable, '-m', 'sgre.serve']
    proc = subprocess.Popen([*cmd, '--model', str(model), '--port', '0', *args], stdout=subprocess.DEVNULL,
                            stderr=open(log, 'w'), env=dict(ENV, **(env or {})))
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


# ---- memory under a burst of large images ------------------------------------------------------------------------------

NO_TRIM = 'import sgre.serve as s; s._malloc_trim = lambda: False'
NO_BUDGET = 'import sgre.serve as s; s._Budget = lambda total: None'
MMAP_THRESHOLD = 'import ctypes; ctypes.CDLL(None).mallopt(-3, 1 << 20)   # M_MMAP_THRESHOLD: every block of 1 MiB or more mmap-ed\n' + NO_TRIM
PROCESSES = """
import functools, multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
import sgre.serve as s
class InProcesses(s._Decoders):
    'The same decoding in worker processes (forkserver); the uploads are read into bytes and sent to them.'
    def __init__(self, decode, n, trim=True):
        decode = functools.partial(decode.func, *decode.args, **dict(decode.keywords, budget=None))   # at most n at once anyway
        super().__init__(decode, n, trim=False)
        self.pool = ProcessPoolExecutor(n, mp_context=mp.get_context('forkserver'))
    async def __call__(self, files): return await super().__call__([(name, f.read()) for name, f in files])
    def close(self): self.pool.shutdown(wait=True)
s._Decoders = InProcesses
"""


def _status(pid: int, key: str) -> int:   # bytes
    try:
        with open(f'/proc/{pid}/status') as f:
            for line in f:
                if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0


def _descendants(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try: kids = [int(k) for t in os.listdir(f'/proc/{p}/task') for k in open(f'/proc/{p}/task/{t}/children').read().split()]
        except OSError: kids = []
        out += kids; todo += kids
    return out


def _pss(pid: int) -> int:   # bytes
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            for line in f:
                if line.startswith('Pss:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return 0


def memory_of(pid: int) -> int:
    "The server's VmRSS plus the proportional share (Pss) of its worker processes, if it has any."
    return _status(pid, 'VmRSS') + sum(_pss(k) for k in _descendants(pid))


def large_image(pixels: int, mode: str = 'RGB', fmt: str = 'PNG') -> tuple:   # (side, encoded bytes)
    "A square image of at most `pixels` pixels: smooth gradients and their XOR, which PNG and JPEG compress well."
    from PIL import Image
    side = int(pixels ** 0.5)
    while side * side > pixels: side -= 1
    x = (np.arange(side, dtype=np.uint32) * 7 // 13 % 256).astype(np.uint8)
    y = (np.arange(side, dtype=np.uint32) * 3 // 5 % 256).astype(np.uint8)
    a = np.empty((side, side, 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = x[None, :], y[:, None], x[None, :] ^ y[:, None]
    im = Image.fromarray(a)
    if mode != 'RGB': im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **({'compress_level': 1} if fmt == 'PNG' else {'quality': 90}))
    return side, buf.getvalue()


def burst(url: str, pid: int, body: tuple, n: int = 16, after_s: float = 10, small: tuple | None = None) -> dict:
    "n concurrent requests of one image each; memory every 50 ms, /health every 100 ms, during the burst and after_s after it."
    if small: httpx.post(url + 'predict', files=[('file', small)], timeout=60).raise_for_status()   # warm up
    time.sleep(1)
    idle = min(memory_of(pid) for _ in range(5) if not time.sleep(0.05))
    samples, health, stop = [], [], threading.Event()
    def sample():
        while not stop.is_set(): samples.append(memory_of(pid)); time.sleep(0.05)
    def poll():
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                t = time.perf_counter()
                try: ok = c.get('health').status_code == 200
                except httpx.HTTPError: ok = False
                health.append((time.perf_counter() - t, ok)); time.sleep(0.1)
    answers = []
    def post(i):
        name, data, kind = body
        try:
            r = httpx.post(url + 'predict', files=[('file', (f'{i}-{name}', data, kind))], timeout=600)
            answers.append((r.status_code, r.headers.get('content-type')))
        except httpx.HTTPError as e: answers.append((type(e).__name__, None))
    watchers = [threading.Thread(target=sample), threading.Thread(target=poll)]
    for t in watchers: t.start()
    clients = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in clients: t.start()
    for t in clients: t.join()
    burst_s = time.perf_counter() - t0
    time.sleep(after_s)
    end = memory_of(pid)
    stop.set()
    for t in watchers: t.join()
    mb = lambda b: b / 2**20
    return dict(idle=mb(idle), peak=mb(max(samples) - idle), after=mb(end - idle), burst_s=burst_s,
                health_max=max(h for h, _ in health), health_failed=sum(not ok for _, ok in health), answers=Counter(answers))


def answers_text(c: Counter) -> str:
    return ', '.join(f'{k} {s}' + ('' if t == 'application/json' else f' ({t})') for (s, t), k in sorted(c.items(), key=str))


def memory_part(root: Path, model: Path, images: list, pixels: int, quick: bool):
    from sgre.serve import default_decoders
    d = default_decoders()
    small = (images[0].name, images[0].read_bytes(), 'image/png')
    t = time.perf_counter()
    side, png = large_image(pixels)
    _, rgba = large_image(pixels, 'RGBA')
    _, jpeg = large_image(pixels, 'RGB', 'JPEG')
    print(f'images {side} x {side} ({side * side:,} pixels; --max-pixels {pixels:,}): PNG RGB {len(png) / 2**20:.1f} MB, '
          f'PNG RGBA {len(rgba) / 2**20:.1f} MB, JPEG {len(jpeg) / 2**20:.1f} MB, made in {time.perf_counter() - t:.0f} s')
    ways = [(f'16 decoders (every request at once), no trim', NO_TRIM, {}, ['--decoders', '16']),
            (f'{d} decoders, no trim', NO_TRIM, {}, []),
            (f'{d} decoders, MALLOC_ARENA_MAX=2, no trim', NO_TRIM, {'MALLOC_ARENA_MAX': '2'}, []),
            (f'{d} decoders, mmap threshold 1 MiB (mallopt), no trim', MMAP_THRESHOLD, {}, []),
            (f'{d} decoders in worker processes', PROCESSES, {}, []),
            (f'{d} decoders, malloc_trim after a burst (the default)', '', {}, [])]
    if quick: ways = [ways[1], ways[-1]]
    cases = [(w, 'PNG RGB', ('big.png', png, 'image/png')) for w in ways]
    if not quick:
        cases += [(ways[-1], 'PNG RGBA', ('big.png', rgba, 'image/png')), (ways[-1], 'JPEG', ('big.jpg', jpeg, 'image/jpeg')),
                  ((f'{d} decoders, malloc_trim after a burst only (no budget)', NO_BUDGET, {}, []), 'PNG RGBA', ('big.png', rgba, 'image/png'))]
    rows = []
    for (way, prelude, env, args), kind, body in cases:
        proc, url = start(model, root / 'server.log', '--max-pixels', str(pixels), *args, prelude=prelude, env=env)
        try: r = burst(url, proc.pid, body, small=small)
        finally:
            proc.send_signal(signal.SIGTERM); proc.wait(60)
        rows.append((way, kind, r))
        print(f'  {way}, {kind}: peak +{r["peak"]:.0f} MB, +{r["after"]:.0f} MB 10 s after, {r["burst_s"]:.1f} s', file=sys.stderr)
    print(f'\n16 concurrent requests, one {side} x {side} image each; memory: MB above the idle server (its VmRSS, plus the Pss of '
          'its worker processes); /health polled every 100 ms during the burst and the 10 s after it')
    print('\n| decoding | image | answers | idle (MB) | peak above idle (MB) | 10 s after (MB) | burst (s) | /health slowest (s) | goal |'
          '\n|---|---|---|---:|---:|---:|---:|---:|---|')
    for way, kind, r in rows:
        ok = (set(s for s, t in r['answers']) <= {200, 413} and all(t == 'application/json' for _, t in r['answers'])
              and r['peak'] <= 1536 and r['after'] <= 300 and r['health_max'] <= 1 and not r['health_failed'])
        print(f'| {way} | {kind} | {answers_text(r["answers"])} | {r["idle"]:.0f} | {r["peak"]:.0f} | {r["after"]:.0f} | '
              f'{r["burst_s"]:.1f} | {r["health_max"]:.2f} | {"met" if ok else "missed"} |')


# ---- throughput ---------------------------------------------------------------------------------------------------------

def throughput_part(root: Path, model: Path, images: list, requests: int, concurrency: list):
    bodies = [(p.name, p.read_bytes(), 'image/png') for p in images]
    rows = []
    for backend in ('PyTorch', 'onnxruntime'):
        for max_batch in (1, 16):
            args = ['--max-batch', str(max_batch), '--max-wait-ms', '10'] + (['--onnx'] if backend == 'onnxruntime' else [])
            proc, url = start(model, root / 'server.log', *args)
            try:
                load(url, bodies, 8, 1)   # warm-up
                for c in concurrency:
                    rps, p50, p99 = load(url, bodies, requests, c)
                    rows.append((backend, max_batch, c, rps, p50, p99))
                    print(f'  {backend} --max-batch {max_batch}, concurrency {c}: {rps:.0f} requests/s', file=sys.stderr)
            finally:
                proc.send_signal(signal.SIGTERM); proc.wait(60)
    print(f'\n| backend | --max-batch | concurrency | requests/s | p50 (ms) | p99 (ms) |\n|---|---:|---:|---:|---:|---:|')
    for b, mb, c, rps, p50, p99 in rows: print(f'| {b} | {mb} | {c} | {rps:.0f} | {p50:.1f} | {p99:.1f} |')


def main():
    from sgre.serve import MAX_PIXELS
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--part', choices=['throughput', 'memory', 'all'], default='all', help='what to measure (default: all)')
    ap.add_argument('--requests', type=int, default=64, help='throughput: requests per cell (default: 64)')
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 4, 16], help='throughput: client threads (default: 1 4 16)')
    ap.add_argument('--pixels', type=int, help=f'memory: --max-pixels, and the images just under it (default: {MAX_PIXELS:_})')
    ap.add_argument('--quick', action='store_true', help='a quick check that it works: fewer requests, smaller images, two ways')
    a = ap.parse_args()
    if a.quick: a.requests, a.concurrency = 16, [1, 16]
    pixels = a.pixels or (10_000_000 if a.quick else MAX_PIXELS)
    root = Path(tempfile.mkdtemp())
    try:
        model, images = tiny_model_folder(root)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
        print(f'{platform.processor() or platform.machine()}, {cores} cores; load average before: '
              + ', '.join(f'{x:.2f}' for x in os.getloadavg()))
        if a.part in ('throughput', 'all'): throughput_part(root, model, images, a.requests, a.concurrency)
        if a.part in ('memory', 'all'): memory_part(root, model, images, pixels, a.quick)
        print('load average after: ' + ', '.join(f'{x:.2f}' for x in os.getloadavg()))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
