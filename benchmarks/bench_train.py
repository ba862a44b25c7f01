"""Training throughput of the fastai Learner against a plain PyTorch loop doing the same steps.

Both loops run the same model, loss (SGRELoss with the asymmetric loss), optimizer (AdamW with true weight
decay), one-cycle schedule and EMA update (timm's ModelEmaV3) over the same batches, which are made once and
kept in memory, so the difference is the training loop itself. Only the training phase is timed (the Learner's
validation pass is excluded). Each variant runs in its own process; peak memory is that process's maximum
resident set size.

Configurations: (a) the digits default of `sgre_train` (ResNet-10-T, output stride 8, 64 px, B=32) and
(b) ResNet-50 at 224 px, B=8.

`--whole` compares instead the whole `sgre_train` path, `train()` (Learner, EMA and its validation, mAP,
`Experiment` with its checkpoints, history, curves and log, TensorBoard), with a plain PyTorch epoch on the same
DataLoaders and model: AdamW with the same groups and one-cycle schedule, an EMA update per step, then the validation
of the model (loss and mAP) and of the EMA weights (mAP), then the checkpoints a loop that can resume writes (the best
EMA weights, and model, EMA and optimizer state), as `train()` writes them; the table also gives the ratio without
that end of the epoch. Each measurement is one epoch in a fresh process; the two
paths alternate over `--rounds` rounds (the order flips each round) and the table gives medians. Each phase is timed in
wall seconds and in CPU seconds of the process (`time.process_time`, all its threads; the DataLoader workers are other
processes, the same for both paths): CPU seconds barely move when other work shares the machine, wall seconds do. Configurations: the
digits demo of the README (`sgre_train`'s defaults: 2000 training and 500 test images, 64 px) and ResNet-50 at 224 px,
B = 8, on a 224 px digits set of 160 training and 48 test images.

Usage: python benchmarks/bench_train.py [--steps 30] [--only digits|resnet50]
       python benchmarks/bench_train.py --whole [--rounds 3] [--only digits|resnet50]
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
    from pathlib import Path
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


def _whole_cfg(name, root):
    "The run's configuration and its prepared data (made once under `root`)."
    from sgre.data import prepare_digits
    from sgre.embeddings import write_embeddings
    from sgre.experiment import parse_config
    d = root / f'data_{name}'
    if not (d / 'minilm.npy').exists():
        if name == 'digits': prepare_digits(d)
        else: prepare_digits(d, n_train=160, n_test=48, size=224)
        write_embeddings(d, 'minilm')
    argv = ['--data-dir', str(d), '--max-epochs', '1', '--exp-root', str(root / 'experiments')]
    if name == 'resnet50':
        argv += ['--data', 'csv', '--arch', 'resnet50', '--no-pretrained', '--img-size', '224', '--batch-size', '8',
                 '--embed-type', 'minilm', '--num-workers', '0']
    return parse_config(argv)[0]


def run_whole(cfg):
    "`train()`, one epoch; seconds of the epoch (its training, validation and end-of-epoch writing) and of the call."
    from fastai.callback.core import Callback
    from sgre.experiment import train

    class Timer(Callback):
        order = 99   # after Experiment (60): its checkpoints and files count
        def before_epoch(self): self.t0, self.c0 = time.perf_counter(), time.process_time()
        def after_train(self): self.train_s, self.train_cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        def after_validate(self):                                                                  # the EMA's pass included
            self.valid_s = time.perf_counter() - self.t0 - self.train_s
            self.valid_cpu = time.process_time() - self.c0 - self.train_cpu
        def after_epoch(self):
            self.epoch_s, self.epoch_cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            self.end_s = self.epoch_s - self.train_s - self.valid_s                                 # history, checkpoints, ...
            self.end_cpu = self.epoch_cpu - self.train_cpu - self.valid_cpu
    timer = Timer()
    t0 = time.perf_counter()
    with open(os.devnull, 'w') as null:
        saved, sys.stdout = sys.stdout, null
        try: train(cfg, cbs=[timer])
        finally: sys.stdout = saved
    return dict(epoch_s=timer.epoch_s, train_s=timer.train_s, valid_s=timer.valid_s, end_s=timer.end_s,
                call_s=time.perf_counter() - t0, epoch_cpu=timer.epoch_cpu, train_cpu=timer.train_cpu,
                valid_cpu=timer.valid_cpu, end_cpu=timer.end_cpu)


def run_loop(cfg):
    "The same epoch as a plain PyTorch loop on the run's own DataLoaders and model."
    import torch
    from pathlib import Path
    from timm.utils.model_ema import ModelEmaV3
    from sgre.core import seed_everything
    from sgre.experiment import build_learner
    from sgre.metrics import mean_ap
    from sgre.train import one_cycle, wd_groups
    t_call = time.perf_counter()
    seed_everything(cfg['seed'])
    learn = build_learner(cfg, device='cpu')
    model, dls, loss_fn = learn.model, learn.dls, learn.loss_func
    g = wd_groups(model)
    opt = torch.optim.AdamW([dict(params=g[0], weight_decay=0.), dict(params=g[1], weight_decay=cfg['weight_decay'])],
                            lr=cfg['lr'], betas=(0.9, 0.999), eps=1e-8)
    ema = ModelEmaV3(model, decay=cfg['ema_decay'])

    plain = lambda t: t.as_subclass(torch.Tensor)   # fastai's batch types, as plain tensors

    def evaluate(m, with_loss):
        m.eval()
        scores, targets, losses = [], [], []
        with torch.no_grad():
            for x, y in dls.valid:
                x, y = plain(x), plain(y)
                out = m(x)
                if with_loss: losses.append(loss_fn(out, y))
                scores.append(torch.sigmoid(out.logits)); targets.append(y)
        m.train()
        return mean_ap(torch.cat(scores).numpy(), torch.cat(targets).numpy()), (torch.stack(losses).mean().item() if with_loss else None)

    t0, c0 = time.perf_counter(), time.process_time()
    total, losses = len(dls.train), []
    model.train()
    for i, (x, y) in enumerate(dls.train):
        x, y = plain(x), plain(y)
        lr, mom = one_cycle(i, total, cfg['lr'], cfg['pct_start'])
        for pg in opt.param_groups: pg['lr'], pg['betas'] = lr, (mom, pg['betas'][1])
        loss = loss_fn(model(x), y)
        loss.backward(); opt.step(); opt.zero_grad()
        ema.update(model)
        losses.append(loss.detach())
    train_loss = torch.stack(losses).mean().item()
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    evaluate(model, True); evaluate(ema.module, False)
    valid_s, valid_cpu = time.perf_counter() - t0 - train_s, time.process_time() - c0 - train_cpu
    # what a plain loop that can resume writes after an epoch: the best EMA weights (the first epoch is the best so far)
    # and the resume state (model, EMA, optimizer), as `train()` does
    ck = Path(os.environ['SGRE_BENCH_ROOT']) / 'plain_checkpoints'; ck.mkdir(exist_ok=True)
    torch.save(ema.module.state_dict(), ck / 'best_ema_model.pth')
    torch.save(dict(model=model.state_dict(), ema=ema.module.state_dict(), opt=opt.state_dict()), ck / 'last.pth')
    epoch_s, epoch_cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(epoch_s=epoch_s, train_s=train_s, valid_s=valid_s, end_s=epoch_s - train_s - valid_s,
                call_s=time.perf_counter() - t_call, epoch_cpu=epoch_cpu, train_cpu=train_cpu, valid_cpu=valid_cpu,
                end_cpu=epoch_cpu - train_cpu - valid_cpu, ckpt_mb=sum(f.stat().st_size for f in ck.glob('*.pth')) / 1e6)


def child(name, variant, steps, warmup):
    if variant in ('whole', 'loop'):
        import tempfile
        from pathlib import Path
        cfg = _whole_cfg(name, Path(os.environ['SGRE_BENCH_ROOT']))
        return print(json.dumps((run_whole if variant == 'whole' else run_loop)(cfg)))
    cfg = CONFIGS[name]
    secs = (run_plain if variant == 'plain' else run_learner)(cfg, steps, warmup)
    print(json.dumps(dict(images_per_s=steps * cfg['bs'] / secs,
                          peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--steps', type=int, default=30, help='timed training steps per run')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--only', choices=list(CONFIGS))
    ap.add_argument('--whole', action='store_true', help='the whole train() path against a plain epoch')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved rounds of --whole')
    ap.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child: return child(*a.child, a.steps, a.warmup)
    import torch
    if a.whole: return whole(a)
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


def whole(a):
    import statistics, tempfile, torch
    from pathlib import Path
    root = Path(tempfile.mkdtemp(prefix='sgre_bench_train_'))
    env = dict(os.environ, SGRE_BENCH_ROOT=str(root), HF_HUB_OFFLINE='1')
    load = os.getloadavg()[0]
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {a.rounds} interleaved rounds, one epoch '
          f'each; load average before: {load:.2f}\n')
    print('| configuration | phase | plain loop: wall s | train(): wall s | ratio | plain loop: CPU s | train(): CPU s | ratio |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for name in ([a.only] if a.only else CONFIGS):
        res = {'whole': [], 'loop': []}
        for r in range(a.rounds):
            for variant in (('whole', 'loop') if r % 2 == 0 else ('loop', 'whole')):
                out = subprocess.run([sys.executable, __file__, '--child', name, variant], capture_output=True, text=True, env=env)
                if out.returncode: sys.exit(f'{name} {variant} failed:\n{out.stderr[-3000:]}')
                res[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {v: {k: statistics.median(x[k] for x in res[v]) for k in res[v][0]} for v in res}
        for k, what in (('train', 'training steps'), ('valid', 'validation: model and EMA'),
                        ('end', f"end of epoch: checkpoints ({med['loop']['ckpt_mb']:.0f} MB), and train()'s history, curves"),
                        ('epoch', '**the epoch**')):
            (p, w), (pc, wc) = (med['loop'][k + '_s'], med['whole'][k + '_s']), (med['loop'][k + '_cpu'], med['whole'][k + '_cpu'])
            print(f"| {name} | {what} | {p:.1f} | {w:.1f} | {f'{w / p:.3f}' if p else ''} | {pc:.1f} | {wc:.1f} | "
                  f"{f'{wc / pc:.3f}' if pc else ''} |", flush=True)
        p, w = med['loop']['train_s'] + med['loop']['valid_s'], med['whole']['train_s'] + med['whole']['valid_s']
        pc, wc = med['loop']['train_cpu'] + med['loop']['valid_cpu'], med['whole']['train_cpu'] + med['whole']['valid_cpu']
        print(f"| {name} | the epoch without its end (training and validation) | {p:.1f} | {w:.1f} | {w / p:.3f} | "
              f"{pc:.1f} | {wc:.1f} | {wc / pc:.3f} |", flush=True)
        print(f"| {name} | rounds: epoch s, train()/plain | " +
              ', '.join(f"{w['epoch_s']:.1f}/{p['epoch_s']:.1f}" for w, p in zip(res['whole'], res['loop'])) + ' | | | ' +
              ', '.join(f"{w['epoch_cpu']:.1f}/{p['epoch_cpu']:.1f}" for w, p in zip(res['whole'], res['loop'])) + ' | | |', flush=True)
    print(f'\nload average after: {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
