"""Training throughput of the fastai Learner against a plain PyTorch loop doing the same steps.

Both loops run the same model, loss (SGRELoss with the asymmetric loss), optimizer (AdamW with true weight
decay), one-cycle schedule and EMA update (timm's ModelEmaV3) over the same batches, which are made once and
kept in memory, so the difference is the training loop itself. Only the training phase is timed (the Learner's
validation pass is excluded). Each variant runs in its own process; peak memory is that process's maximum
resident set size.

Configurations: (a) the digits default of `sgre_train` (ResNet-10-T, output stride 8, 64 px, B=32) and
(b) ResNet-50 at 224 px, B=8.

Usage: python benchmarks/bench_train.py [--steps 30] [--only digits|resnet50]
"""
import argparse, json, os, resource, subprocess, sys, time

CONFIGS = {
    'digits': dict(arch='resnet10t', img=64, bs=32, C=10, T=384, kw=dict(output_stride=8, pos=True, num_layers=0, attn_dim=256),
                   lr=1e-3),
    'resnet50': dict(arch='resnet50', img=224, bs=8, C=80, T=384, kw=dict(pos=True), lr=1e-4),
}


def _batches(cfg, n):
    import torch
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(cfg['bs'], 3, cfg['img'], cfg['img'], generator=g),
             (torch.rand(cfg['bs'], cfg['C'], generator=g) < 0.3).float()) for _ in range(n)]


def _model(cfg):
    import torch
    from sgre.model import SGRE
    torch.manual_seed(0)
    return SGRE(cfg['arch'], cfg['C'], embeddings=torch.randn(cfg['C'], cfg['T']), **cfg['kw'])


def run_plain(cfg, steps, warmup):
    import torch
    from timm.utils.model_ema import ModelEmaV3
    from sgre.loss import SGRELoss
    from sgre.train import one_cycle, wd_groups
    model = _model(cfg).train()
    groups = wd_groups(model)
    opt = torch.optim.AdamW([dict(params=groups[0], weight_decay=0.), dict(params=groups[1], weight_decay=1e-4)],
                            lr=cfg['lr'], betas=(0.9, 0.999), eps=1e-8)
    ema, loss_fn = ModelEmaV3(model, decay=0.9997), SGRELoss()
    batches = _batches(cfg, steps + warmup)
    total = len(batches)
    t0 = None
    for i, (x, y) in enumerate(batches):
        if i == warmup: t0 = time.perf_counter()
        lr, mom = one_cycle(i, total, cfg['lr'])
        for pg in opt.param_groups: pg['lr'], pg['betas'] = lr, (mom, pg['betas'][1])
        loss = loss_fn(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad()
        ema.update(model)
        loss.item()                                   # the Learner reads the loss every step too
    return time.perf_counter() - t0


def run_learner(cfg, steps, warmup):
    import torch
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from sgre.train import EMA, MeanAP, SGRELearner, fit_recipe, sgre_opt, wd_groups
    from sgre.loss import SGRELoss
    from functools import partial
    batches = _batches(cfg, steps + warmup)
    dls = DataLoaders(DataLoader(batches, bs=None), DataLoader(batches[:1], bs=None), device='cpu')
    ema = EMA(0.9997, validate=False)

    class Timer(Callback):
        order = 99
        def before_train(self): self.i = 0
        def before_batch(self):
            if self.training and self.i == warmup: self.t0 = time.perf_counter()
        def after_batch(self):
            if self.training: self.i += 1
        def after_train(self): self.elapsed = time.perf_counter() - self.t0
    timer = Timer()
    learn = SGRELearner(dls, _model(cfg), loss_func=SGRELoss(), opt_func=partial(sgre_opt, wd=1e-4, true_wd=True),
                        lr=cfg['lr'], splitter=wd_groups, cbs=[ema, timer], moms=(0.95, 0.85, 0.95))
    with open(os.devnull, 'w') as null:
        saved, sys.stdout = sys.stdout, null
        try: fit_recipe(learn, 1, lr=cfg['lr'])
        finally: sys.stdout = saved
    return timer.elapsed


def child(name, variant, steps, warmup):
    cfg = CONFIGS[name]
    secs = (run_plain if variant == 'plain' else run_learner)(cfg, steps, warmup)
    print(json.dumps(dict(images_per_s=steps * cfg['bs'] / secs,
                          peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', type=int, default=30, help='timed training steps per run')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--only', choices=list(CONFIGS))
    ap.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(*a.child, a.steps, a.warmup)
    import torch
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {a.steps} timed steps after {a.warmup} warm-up\n')
    print('| configuration | loop | images/s | peak RSS (MiB) |')
    print('|---|---|---:|---:|')
    for name in ([a.only] if a.only else CONFIGS):
        res = {}
        for variant in ('plain', 'learner'):
            out = subprocess.run([sys.executable, __file__, '--child', name, variant, '--steps', str(a.steps),
                                  '--warmup', str(a.warmup)], capture_output=True, text=True, check=True)
            res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {variant} | {res[variant]['images_per_s']:.1f} | {res[variant]['peak_mib']:.0f} |", flush=True)
        over = res['plain']['images_per_s'] / res['learner']['images_per_s'] - 1
        print(f'| {name} | Learner overhead | {over:+.1%} | |', flush=True)


if __name__ == '__main__':
    main()
