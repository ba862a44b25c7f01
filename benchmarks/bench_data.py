"""Speed of the data pipeline: CPU-seconds per training image, and `sgre_dls` (fastai) against a plain torchvision loader.

Part `cpu` (what sizes the loader workers of a GPU): CPU-seconds per training image at 448 px from synthetic
photo-like 640x480 JPEGs (quality 90), measured with `time.process_time` (CPU time, so the figure holds on a loaded
machine, unlike a rate), for
  - decode + resize alone (`load_rgb`, then the squish resize), in this process, one image at a time;
  - the whole recipe of an item (decode, squish, flip, Cutout, RandAugment, to a uint8 tensor: fastai's item steps,
    `dl.do_item`), in this process;
  - collating items into batches (fastai's `do_batch`; in fastai the workers do it), in this process;
  - the same through `sgre_dls`'s training loader with `--workers` worker processes: the workers' CPU time (collected
    with `resource.getrusage(RUSAGE_CHILDREN)` once fastai's workers exit at the end of the epoch) per image, for a whole
    epoch, and per additional image from two epochs of different lengths (which also gives the fixed cost of starting
    the workers of an epoch); the training process's share is given apart, since on a GPU its batch step (float
    conversion, normalisation) runs on the device instead.
The in-process parts run with one PyTorch thread, as a loader worker does.
Workers per GPU = images/s the GPU trains x CPU-seconds per image (whole recipe, through the loader).

Part `speed`: images/s of `sgre_dls` against a plain torchvision loader.

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

Usage: python benchmarks/bench_data.py [--part cpu|speed|all] [--quick] [--n-images 480] [--measure 320] [--repeats 3]
"""
import argparse, os, platform, random, resource, statistics, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from sgre.data import _cutout, _Squish, load_rgb, prepare_csv, read_prepared, sgre_dls

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


def make_dataset(folder: Path, n: int, size: tuple = (500, 375)) -> Path:
    "Write `n` JPEGs of `size` and a CSV (random labels from 20 classes, 1-3 each) and prepare them."
    rng = np.random.default_rng(0)
    (folder / 'images').mkdir(parents=True)
    rows = ['fname,labels,is_valid']
    for i in range(n):
        natural_image(rng, *size).save(folder / 'images' / f'{i:05d}.jpg', quality=90)
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


def workers_cpu(dl, n: int) -> tuple:
    "CPU-seconds of the loader's worker processes and of this process for one epoch of `n` images (fastai's workers exit at its end)."
    dl.n = n
    kids0, own0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    seen = sum(len(x) for x, _ in dl)
    kids1, own1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    return seen, kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime, own1 - own0


def cpu_seconds(folder: Path, n: int, img_size: int, bs: int, workers: int) -> dict:
    "CPU-seconds per training image: decode + resize, the item recipe, collation, and through the loader with workers."
    prepared = make_dataset(folder, n, (640, 480))
    data = read_prepared(prepared)
    paths = [p for p, _ in data.train]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # as in a loader worker (PyTorch sets one thread there); two would spin on a loaded machine
    squish = _Squish(img_size)
    for p in paths[:4]: squish(load_rgb(p))   # warm-up: imports, caches
    c0 = time.process_time()
    for p in paths: squish(load_rgb(p))
    decode_resize = (time.process_time() - c0) / len(paths)
    dl = sgre_dls(prepared, img_size=img_size, bs=bs, num_workers=0, device='cpu', seed=0).train
    for i in range(4): dl.do_item(i)
    c0 = time.process_time()
    for i in range(len(dl.dataset)): dl.do_item(i)
    recipe = (time.process_time() - c0) / len(dl.dataset)
    items = [dl.do_item(i) for i in range(bs)]
    c0 = time.process_time()
    for _ in range(10): dl.do_batch(items)
    collate = (time.process_time() - c0) / (10 * bs)
    torch.set_num_threads(threads)
    dl = sgre_dls(prepared, img_size=img_size, bs=bs, num_workers=workers, device='cpu', seed=0).train
    n_full = len(dl.dataset) // bs * bs
    workers_cpu(dl, n_full)   # a first epoch warms up
    small, w_small, own_small = workers_cpu(dl, 2 * bs)
    full, w_full, own_full = workers_cpu(dl, n_full)
    marginal = (w_full - w_small) / (full - small)   # per image, once the workers run
    return dict(n=len(paths), seen=full, decode_resize=decode_resize, recipe=recipe, collate=collate, loader_workers=w_full / full,
                loader_marginal=marginal, loader_epoch=w_small - small * marginal, loader_main=own_full / full, small=small)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--part', choices=('cpu', 'speed', 'all'), default='all')
    p.add_argument('--quick', action='store_true', help='few images, one repeat: checks that it runs')
    p.add_argument('--n-images', type=int, default=480)
    p.add_argument('--measure', type=int, default=320)
    p.add_argument('--warmup', type=int, default=2, help='batches')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--img-size', type=int, default=448)
    p.add_argument('--bs', type=int, default=32)
    p.add_argument('--workers', type=int, default=2)
    a = p.parse_args()
    if a.quick: a.n_images, a.measure, a.repeats, a.bs = 80, 32, 1, 16
    print(f'Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the start.')
    if a.part in ('cpu', 'all'):
        with tempfile.TemporaryDirectory() as d:
            r = cpu_seconds(Path(d), a.n_images, a.img_size, a.bs, a.workers)
        print()
        print(f'CPU-seconds per training image, 640x480 JPEGs (quality 90) to {a.img_size} px, {r["n"]} training images '
              f'({r["seen"]} through the loader: bs {a.bs}, drop_last, {a.workers} workers):')
        print()
        print('| work | CPU ms per image | images per CPU-second |')
        print('|---|---|---|')
        for name, v in (('decode + resize (`load_rgb`, squish)', r['decode_resize']),
                        ('whole item recipe (+ flip, Cutout, RandAugment, to tensor), one process', r['recipe']),
                        (f'collating into batches of {a.bs} (fastai\'s `do_batch`, done in the workers), one process', r['collate']),
                        (f'through `sgre_dls` with {a.workers} workers: the workers, an epoch of {r["seen"]} images', r['loader_workers']),
                        (f'the same, per additional image (epochs of {r["small"]} and {r["seen"]} images)', r['loader_marginal']),
                        ('through `sgre_dls`: the training process (batch step on the CPU here; on a GPU it runs there)', r['loader_main'])):
            print(f'| {name} | {v * 1e3:.2f} | {1 / v:.0f} |')
        print()
        print(f'Starting the workers of an epoch (fork, copy-on-write of the training process\'s memory, first batches): '
              f'{r["loader_epoch"]:.2f} CPU-seconds per epoch for {a.workers} workers (from the same two epochs).')
    if a.part in ('speed', 'all'): speed(a)


def speed(a):
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
    print()
    print('| pipeline | images/s |')
    print('|---|---|')
    print(f'| plain torchvision `Dataset` + `DataLoader` | {plain_r:.1f} |')
    print(f'| `sgre_dls` (fastai) | {fastai_r:.1f} |')
    print(f'| ratio fastai / plain | {fastai_r / plain_r:.2f} |')


if __name__ == '__main__':
    main()
