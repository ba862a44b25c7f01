"""Training on partially labelled data: the digits demo with half of each training image's labels hidden.

Three runs of `sgre_train` with the digits demo's recipe (ResNet-10-T from random initialisation, 64 px, six epochs,
MiniLM label embeddings), the same seed and the same test set with every label known:

1. **fully labelled**: the demo set as `sgre_prepare --data digits` writes it;
2. **half hidden, `--unknown ignore`**: the same training images, with a random half of each image's ten label cells
   hidden — train.txt in the three-field format, the hidden positives and negatives both left out, so they are unknown;
   the loss ignores the unknown cells;
3. **half hidden, `--unknown negative`**: the same list, with the unknown cells taken as negatives (what a pipeline
   without partial labels does: a hidden positive becomes a false negative).

It prints a Markdown table: per run, the test mAP of the EMA weights after the last epoch, the best over the epochs,
and the live model's; also how many training cells are known and how many positives were hidden.

Usage: python benchmarks/bench_partial.py [--work DIR] [--epochs 6] [--hide 0.5] [--seed 0]
"""
import argparse, csv, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np


def hide_labels(src: Path, dest: Path, frac: float, seed: int) -> dict:
    "Copy a prepared dataset, hiding `frac` of each training image's label cells (three-field train.txt); the rest untouched."
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns('images'))
    (dest / 'root.txt').write_text(str(src.resolve()) + '\n')          # the images stay where they are
    labels = (src / 'label.txt').read_text(encoding='utf-8').split('\n')[:-1]
    rng = np.random.default_rng(seed)
    lines, known, hidden_pos, pos = [], 0, 0, 0
    for line in (src / 'train.txt').read_text(encoding='utf-8').splitlines():
        path, names = line.split('\t')
        p = set(names.split(',')) if names else set()
        keep = set(rng.choice(labels, len(labels) - round(frac * len(labels)), replace=False).tolist())
        kept_pos = [l for l in labels if l in p and l in keep]
        kept_neg = [l for l in labels if l not in p and l in keep]
        lines.append(f"{path}\t{','.join(kept_pos)}\t{','.join(kept_neg)}")
        known += len(keep); pos += len(p); hidden_pos += len(p - keep)
    (dest / 'train.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    return dict(images=len(lines), cells=len(lines) * len(labels), known=known, positives=pos, hidden_positives=hidden_pos)


def run(data: Path, root: Path, epochs: int, seed: int, *extra) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    cmd = [sys.executable, '-m', 'sgre.train', '--data', 'digits', '--data-dir', str(data), '--max-epochs', str(epochs),
           '--seed', str(seed), '--exp-root', str(root), *extra]
    t0 = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode: raise SystemExit(f'{" ".join(cmd)} failed:\n{res.stderr[-3000:]}')
    exp = next((root / 'mlic_digits').glob('exp*'))
    rows = list(csv.DictReader(open(exp / 'history.csv', encoding='utf-8')))
    return dict(last=float(rows[-1]['ema_mAP']), best=max(float(r['ema_mAP']) for r in rows), live=float(rows[-1]['mAP']),
                minutes=(time.time() - t0) / 60)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--work', help='a folder for the data and the runs (default: a temporary one)')
    ap.add_argument('--epochs', type=int, default=6); ap.add_argument('--hide', type=float, default=0.5)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix='bench_partial_'))
    from sgre.data import prepare_digits
    from sgre.embeddings import write_embeddings
    full = work / 'digits'
    if not (full / 'label.txt').exists():
        prepare_digits(full)
        write_embeddings(full, 'minilm')
    hidden = work / 'digits_half_hidden'
    if hidden.exists(): shutil.rmtree(hidden)
    counts = hide_labels(full, hidden, a.hide, a.seed)
    runs = {'fully labelled': run(full, work / 'runs_full', a.epochs, a.seed),
            f'{a.hide:.0%} of the cells hidden, --unknown ignore': run(hidden, work / 'runs_ignore', a.epochs, a.seed, '--unknown', 'ignore'),
            f'{a.hide:.0%} of the cells hidden, --unknown negative': run(hidden, work / 'runs_negative', a.epochs, a.seed, '--unknown', 'negative')}
    print(f"training images {counts['images']}, label cells {counts['cells']}, known in the hidden variant {counts['known']} "
          f"({counts['known'] / counts['cells']:.0%}); positives {counts['positives']}, of which hidden {counts['hidden_positives']}\n")
    print('| training labels | test mAP, EMA weights, last epoch | best over the epochs | live model, last epoch |')
    print('|---|---:|---:|---:|')
    for name, r in runs.items():
        print(f"| {name} | {r['last']:.4f} | {r['best']:.4f} | {r['live']:.4f} |")
    print(f"\n({sum(r['minutes'] for r in runs.values()):.0f} minutes for the three runs)")


if __name__ == '__main__':
    main()
