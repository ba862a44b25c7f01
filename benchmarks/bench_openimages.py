"""Peak memory of `sgre_prepare --data openimages` on a large synthetic annotation CSV (the streaming claim).

Writes, in a temporary folder, an Open Images raw layout whose train CSV has `--rows` rows (default 10,000,000, about
ten rows per image, in random ImageID order so that the rows are spread over many sorted runs and merged), 9,605
trainable classes among 12,000 described ones (rows of the others are ignored, as in the real files), confidence 1 or
0; the test CSV is small. Then, in a fresh child process, it runs `prepare_openimages` and reports the child's resident
memory after the imports, its peak (VmHWM), the run's CPU seconds and the lines written. Memory does not depend on the
machine's load; the times do (say so when you quote them).

The images are not written (a million files): the image check is replaced by a pass-through in the child, so the
figure is that of reading, grouping, sorting, merging and writing the lists. The check itself holds one chunk of 512
entries at a time.

Usage: python benchmarks/bench_openimages.py [--rows 10000000] [--quick]   (--quick: 200,000 rows)
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

CHILD = r'''
import json, os, resource, sys, time
from pathlib import Path
from unittest.mock import patch
import sgre.data as data

def status(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024
after_import = status('VmRSS:')
raw, dest = Path(sys.argv[1]), Path(sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
with patch.object(data._ImageCheck, '__call__', lambda self, entries, split: (setattr(self, 'seen', self.seen + len(entries)), entries)[1]):
    data.prepare_openimages(raw, dest)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
lines = {f: sum(1 for _ in open(dest/f'{f}.txt', 'rb')) for f in ('label', 'train', 'test')}
print(json.dumps(dict(after_import=after_import, peak=status('VmHWM:'), wall=wall, cpu=cpu, lines=lines)))
'''


def write_raw(root: Path, rows: int, seed: int = 0) -> dict:
    "An Open Images raw layout with `rows` train rows; returns what was written."
    rng = np.random.default_rng(seed)
    n_classes, n_trainable = 12_000, 9_605
    mids = [f'/m/{k:06x}' for k in range(n_classes)]
    trainable = rng.permutation(n_classes)[:n_trainable]
    (root/'oidv6-classes-trainable.txt').write_text(''.join(f'{mids[k]}\n' for k in trainable))
    with open(root/'oidv6-class-descriptions.csv', 'w') as f:
        f.write('LabelName,DisplayName\n')
        for k, m in enumerate(mids): f.write(f'{m},Class {k}\n')
    n_images = max(1, rows // 10)
    ids = np.array([f'{v:016x}' for v in rng.integers(0, 2**63, n_images)])
    block = 1_000_000
    with open(root/'oidv6-train-annotations-human-imagelabels.csv', 'w') as f:
        f.write('ImageID,Source,LabelName,Confidence\n')
        for start in range(0, rows, block):
            n = min(block, rows - start)
            img, cls, conf = rng.integers(0, n_images, n), rng.integers(0, n_classes, n), rng.random(n) < 0.6
            f.write(''.join(f'{ids[i]},verification,{mids[c]},{int(p)}\n' for i, c, p in zip(img, cls, conf)))
    with open(root/'test-annotations-human-imagelabels.csv', 'w') as f:
        f.write('ImageID,Source,LabelName,Confidence\n')
        for i in range(100): f.write(f'{i:016x},verification,{mids[trainable[i]]},1\n')
    return dict(rows=rows, images=n_images, size=(root/'oidv6-train-annotations-human-imagelabels.csv').stat().st_size)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rows', type=int, default=10_000_000)
    p.add_argument('--quick', action='store_true', help='200,000 rows')
    a = p.parse_args()
    rows = 200_000 if a.quick else a.rows
    with tempfile.TemporaryDirectory(prefix='sgre-bench-oi-') as d:
        raw = Path(d)/'raw'
        raw.mkdir()
        t0 = time.perf_counter()
        made = write_raw(raw, rows)
        print(f'wrote a train CSV of {made["rows"]:,} rows ({made["size"] / 2**20:.0f} MiB, {made["images"]:,} image ids) '
              f'in {time.perf_counter() - t0:.0f} s')
        print('preparing it in a child process', flush=True)
        res = subprocess.run([sys.executable, '-c', CHILD, str(raw), str(Path(d)/'prepared')], capture_output=True, text=True)
        if res.returncode: sys.exit(f'the child failed with exit status {res.returncode}:\n{res.stderr}')
        r = json.loads(res.stdout.strip().splitlines()[-1])
    mib = lambda b: f'{b / 2**20:,.0f} MiB'
    print()
    print(f'| train CSV rows | size | images written | RSS after imports | peak RSS | peak - imports | CPU s | wall s |')
    print('|---|---|---|---|---|---|---|---|')
    print(f'| {rows:,} | {mib(made["size"])} | {r["lines"]["train"]:,} | {mib(r["after_import"])} | {mib(r["peak"])} | '
          f'{mib(r["peak"] - r["after_import"])} | {r["cpu"]:.0f} | {r["wall"]:.0f} |')


if __name__ == '__main__':
    main()
