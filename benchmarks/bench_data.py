"""Speed of the data pipeline: `sgre_dls` (fastai) against a plain torchvision Dataset/DataLoader.

Both read the same JPEG files and do the same work per training image at 448 px: decode, squish-resize
(bilinear), random horizontal flip, Cutout (`sgre.data._cutout`, the same function), torchvision's
RandAugment, conversion to a float tensor and ImageNet normalisation, batches of 32, `num_workers=2`,
shuffled, on the CPU. The fastai pipeline converts to float and normalises once per batch (its batch
transforms); the plain one per image in the workers, as torchvision's `ToTensor` + `Normalize` do.

Images: `--n-images` synthetic 500x375 JPEGs (quality 90) with natural-looking content (smooth colour
fields, blurred shapes, fine texture and noise, so that decoding costs what a photo costs), written to a
temporary folder and prepared through the CSV path (`prepare_csv`).

Measure: each run starts the loader, takes `--warmup` batches (worker start-up, first decodes), then
times the next `--measure` images. Runs alternate between the two pipelines `--repeats` times; the table
gives the median rate of each and the ratio of the medians.

Usage: python benchmarks/bench_data.py [--n-images 480] [--measure 320] [--repeats 3]
"""
import argparse, os, platform, random, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from sgre.data import _cutout, prepare_csv, read_prepared, sgre_dls

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def natural_image(rng: np.random.Generator, w: int = 500, h: int = 375) -> Image.Image:
    "A photo-like image: low-frequency colour field, a few blurred shapes, fine texture, sensor noise."
    coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, np.float32).copy()
    yy, xx = np.mgrid[:h, :w]
    for _ in range(rng.integers(3, 8)):  # blobs
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, 120)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r ** 2
        arr[mask] = arr[mask] * 0.4 + rng.uniform(0, 255, 3) * 0.6
    for scale, weight in ((4, 0.3), (2, 0.2), (1, 0.1)):  # texture at three scales
        t = rng.uniform(-128, 128, (h // scale, w // scale)).astype(np.float32)
        arr += np.asarray(Image.fromarray(t, 'F').resize((w, h), Image.BILINEAR))[..., None] * weight
    arr += rng.normal(0, 3, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(folder: Path, n: int) -> Path:
    "Write `n` JPEGs and a CSV (random labels from 20 classes, 1-3 each) and prepare them."
    rng = np.random.default_rng(0)
    (folder / 'images').mkdir(parents=True)
    rows = ['fname,labels,is_valid']
    for i in range(n):
        natural_image(rng).save(folder / 'images' / f'{i:05d}.jpg', quality=90)
        labels = ' '.join(f'c{k}' for k in rng.choice(20, rng.integers(1, 4), replace=False))
        rows.append(f'{i:05d}.jpg,{labels},{i % 10 == 9}')
    (folder / 'data.csv').write_text('\n'.join(rows) + '\n')
    return prepare_csv(folder / 'data.csv', folder / 'images', folder / 'prepared', valid_col='is_valid')


class PlainDataset(Dataset):
    "The same recipe, the torchvision way: PIL transforms, ToTensor and Normalize per image."
    def __init__(self, items, labels, size):
        self.items, self.col = items, {l: k for k, l in enumerate(labels)}
        self.tfm = T.Compose([T.Resize((size, size)), T.RandomHorizontalFlip(), T.Lambda(_cutout), T.RandAugment(),
                              T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self): return len(self.items)

    def __getitem__(self, i):
        path, labels = self.items[i]
        y = torch.zeros(len(self.col))
        y[[self.col[l] for l in labels]] = 1.
        return self.tfm(Image.open(path).convert('RGB')), y


def rate(loader, bs: int, warmup: int, measure: int) -> float:
    "Images per second over `measure` images, after `warmup` batches of a fresh iteration."
    it = iter(loader)
    for _ in range(warmup): next(it)
    n, t0 = 0, time.perf_counter()
    while n < measure:
        x, y = next(it)
        n += len(x)
    return n / (time.perf_counter() - t0)


def machine() -> str:
    model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), platform.processor())
    return f'{model}, {len(os.sched_getaffinity(0))} cores available, torch {torch.__version__}, Python {platform.python_version()}'


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n-images', type=int, default=480)
    p.add_argument('--measure', type=int, default=320)
    p.add_argument('--warmup', type=int, default=2, help='batches')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--workers', type=int, default=2)
    a = p.parse_args()
    n_train = a.n_images - a.n_images // 10   # every tenth image is a test image
    assert n_train // a.bs >= a.warmup + -(-a.measure // a.bs), 'too few training images for --warmup and --measure'
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        prepared = make_dataset(Path(d), a.n_images)
        print(f'wrote {a.n_images} JPEGs of 500x375 in {time.perf_counter() - t0:.0f} s')
        data = read_prepared(prepared)
        plain = DataLoader(PlainDataset(data.train, data.labels, a.img_size), batch_size=a.bs, shuffle=True,
                           num_workers=a.workers, drop_last=True)
        fastai = sgre_dls(prepared, img_size=a.img_size, bs=a.bs, num_workers=a.workers, device='cpu').train
        xb, yb = next(iter(fastai)); xp, yp = next(iter(plain))
        assert xb.shape == xp.shape and yb.shape == yp.shape, (xb.shape, xp.shape, yb.shape, yp.shape)
        rates = {'plain': [], 'fastai': []}
        for r in range(a.repeats):
            for name, dl in (('plain', plain), ('fastai', fastai)):
                rates[name].append(rate(dl, a.bs, a.warmup, a.measure))
                print(f'run {r + 1}: {name:6s} {rates[name][-1]:6.1f} images/s')
    plain_r, fastai_r = statistics.median(rates['plain']), statistics.median(rates['fastai'])
    print()
    print(f'Decode + training augmentation at {a.img_size} px, batch {a.bs}, num_workers={a.workers}, {a.measure} images per run '
          f'after {a.warmup} warm-up batches, median of {a.repeats} alternating runs.')
    print(f'Machine: {machine()}.')
    print()
    print('| pipeline | images/s |')
    print('|---|---|')
    print(f'| plain torchvision `Dataset` + `DataLoader` | {plain_r:.1f} |')
    print(f'| `sgre_dls` (fastai) | {fastai_r:.1f} |')
    print(f'| ratio fastai / plain | {fastai_r / plain_r:.2f} |')


if __name__ == '__main__':
    main()
