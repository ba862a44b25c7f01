"""The evaluation report at a large vocabulary: time, size and memory of `write_report` (issue 23 §4: 5,000 labels in
under 30 s and under 20 MB).

    python benchmarks/bench_report.py                 # 4,000 images x 5,000 labels
    python benchmarks/bench_report.py --quick         # 1,000 x 1,000, a few seconds
    python benchmarks/bench_report.py --json          # one JSON line (tests/test_report_scale.py reads it)
    python benchmarks/bench_report.py --dest DIR      # keep the two reports in DIR

Synthetic scores and targets made as tests/test_metrics_scale.py makes them: float32 scores uniform in [0, 1), about
3 positives an image and every class at least one, positives' scores raised by 0.3 so AP is not at chance, and a
class with many tied scores. The report is written twice: without thumbnails (scores only), and with thumbnails of the
largest errors from 24 small JPEG files standing in for the test images and an attention callable that returns each
image at 224 px with a Gaussian heat map (as a model's would be: `model_attention` gives the same types). sgre.viz
(whose `_overlay` draws the thumbnails) is imported before the clock starts: an evaluation that has a model has it
loaded already.

Printed per run: wall seconds and CPU seconds of `write_report`, the file's size, and the rise of the process's peak
resident memory (VmHWM after writing 5 to /proc/self/clear_refs, less VmRSS before the call) — memory and size do not
depend on the machine's load; the times do (the load average is printed with them).
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path

import numpy as np


def status(key: str) -> int:
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'): return int(line.split()[1]) * 1024
    return 0


def synthetic(n: int, C: int, seed: int = 0) -> tuple:
    "Scores and targets as tests/test_metrics_scale.py makes them."
    rng = np.random.default_rng(seed)
    S = rng.random((n, C), dtype=np.float32)
    S[:, 7 % C] = np.round(S[:, 7 % C] * 20) / 20                  # a class with many tied scores
    Y = np.zeros((n, C), np.uint8)
    Y[np.repeat(np.arange(n), 3), rng.integers(0, C, 3 * n)] = 1   # about 3 positives an image
    Y[rng.integers(0, n, C), np.arange(C)] = 1                     # and every class has one
    pos = Y == 1
    S[pos] = np.minimum(S[pos] + 0.3, 1)
    return S, Y


def images(folder: Path, n: int, k: int = 24) -> list:
    "n image paths cycling over k small JPEG files written in `folder`."
    from PIL import Image
    rng = np.random.default_rng(1)
    files = []
    for i in range(k):
        f = folder / f'{i:02d}.jpg'
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(f, quality=90)
        files.append(f)
    return [files[i % k] for i in range(n)]


def fake_attention(paths: list, size: int = 224):
    "An attention callable with a model's types: each pair's image at `size` px and a Gaussian heat map in [0, 1]."
    from PIL import Image
    yy, xx = np.mgrid[0:size, 0:size] / size
    def attention(pairs):
        out = []
        for i, c in pairs:
            cy, cx = ((i * 7 + c) % 10) / 10, ((i * 3 + c * 5) % 10) / 10
            heat = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
            out.append((Image.open(paths[i]).convert('RGB').resize((size, size)), heat / heat.max()))
        return out
    return attention


def measure(S, Y, labels, dest: Path, **kw) -> dict:
    from sgre.report import write_report
    open('/proc/self/clear_refs', 'w').write('5')
    base = status('VmRSS')
    w0, c0 = time.perf_counter(), time.process_time()
    write_report(dest, S, Y, labels, **kw)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return dict(seconds=wall, cpu_seconds=cpu, bytes=dest.stat().st_size, peak_rise=status('VmHWM') - base)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--images', type=int, default=4000)
    ap.add_argument('--classes', type=int, default=5000)
    ap.add_argument('--quick', action='store_true', help='1,000 images x 1,000 labels')
    ap.add_argument('--json', action='store_true', help='print one JSON line instead of the table')
    ap.add_argument('--dest', help='keep the reports (plain.html, report.html) and images in this folder')
    a = ap.parse_args(argv)
    n, C = (1000, 1000) if a.quick else (a.images, a.classes)
    import sgre.viz  # noqa: F401  (see the docstring)
    S, Y = synthetic(n, C)
    labels = [f'label {c:05d}' for c in range(C)]
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        d = Path(a.dest or d)
        d.mkdir(parents=True, exist_ok=True)
        paths = images(d, n)
        rows['scores only'] = measure(S, Y, labels, d / 'plain.html')
        rows['with thumbnails'] = measure(S, Y, labels, d / 'report.html', items=[str(p) for p in paths],
                                          attention=fake_attention(paths), title=f'synthetic {n} x {C}',
                                          notes=['bench_report.py'])
    res = dict(images=n, classes=C, inputs=S.nbytes + Y.nbytes, load=os.getloadavg()[0], runs=rows)
    if a.json: print(json.dumps(res)); return
    print(f'write_report, {n:,} images x {C:,} labels (inputs {res["inputs"] / 2**20:.0f} MiB), load average {res["load"]:.2f}')
    print(f'{"":>16} {"wall s":>8} {"CPU s":>8} {"size MB":>8} {"peak rise MiB":>14}')
    for name, r in rows.items():
        print(f'{name:>16} {r["seconds"]:8.2f} {r["cpu_seconds"]:8.2f} {r["bytes"] / 1e6:8.2f} {r["peak_rise"] / 2**20:14.0f}')


if __name__ == '__main__':
    main()
