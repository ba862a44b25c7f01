"""GPU check for sgre: one command, at most about 8 minutes on one GPU, one Markdown table (also saved as CSV).

Sections (each runs in its own process with its own time limit, so a crash, an out-of-memory error or a
hang in one gives a FAILED row and the others still run):

1. precision: `sgre.model.SGRE` (ResNet-101 at 448 px, B=4, C=80, random weights, train mode, dropout off)
   with the fused and with the naive (original) attention, in float32 and under autocast float16 and
   bfloat16. Each output (logits, semantic logits, attention) and the gradients (all parameters; the
   attention's own parameters alone) of a fixed random linear function of the semantic logits and the
   attention are compared with a float64 copy of the same model using the naive attention: relative error
   ||x - ref|| / ||ref||. (The final logits are left out of that function: they are a maximum over tokens,
   whose argmax can move in half precision.) The status is CHECK where the fused attention is more than
   twice as far from the reference as the naive one.
   Float32 here is PyTorch's default on CUDA (cuDNN convolutions may use TF32; the header says which).
2. train: a plain PyTorch training step (not the fastai Learner): ResNet-101 at 448 px, C=80, batch 32,
   random initialisation (pretrained=False), random fixed label embeddings (80 x 768), sgre's loss
   (`SGRELoss` over the asymmetric loss) and `torch.optim.AdamW`, on one random batch. Images/s over a
   timed loop after warm-up steps, and the peak of `torch.cuda.max_memory_allocated` during that loop,
   for: naive head; fused head; fused + AMP (float16 autocast with `torch.amp.GradScaler`); fused + AMP +
   `torch.compile` (its own process; the compilation time is reported separately).
3. ddp: `accelerate launch --num_processes 1` running this script's `--ddp-child`: it joins a process
   group of one (NCCL on CUDA) through `accelerate.PartialState`, builds sgre's fastai Learner
   (`sgre.train.sgre_learner`) on the built-in digits set (`sgre.data.prepare_digits`) and trains 20 steps
   inside `learn.distrib_ctx(sync_bn=True)`, as `sgre.train`'s `_fit` does for several processes. The row
   gives steps/s, the backend, and the number of `nn.SyncBatchNorm` layers in the trained model. (With one
   process `accelerate` does not wrap the model in DDP itself, so the child does; sgre's own command-line
   training only enters `distrib_ctx` with two or more processes.)
4. data: `sgre.data.sgre_dls` over synthetic JPEGs prepared with `sgre.data.prepare_csv`, training
   pipeline of the seed's recipe (squish to 448 px, flip, Cutout, RandAugment, batch 32, ImageNet
   normalisation on the GPU): images/s with 8 and with 16 workers.

Without a CUDA GPU it prints one line and exits 0 (nothing written). `--cpu-smoke` runs every section on
the CPU at tiny sizes (resnet10t; 32 px images for the model, 64 px for the launch and the loader;
batch 2; a few steps; 2 workers; `torch.compile` with the `aot_eager` backend; the launch with gloo and
without SyncBatchNorm, which needs CUDA) to prove the code paths; its numbers mean nothing.

Usage: python benchmarks/gpu_check.py [--out gpu_check.csv] [--budget 460] [--cpu-smoke] [--only SECTION ...]
"""
import argparse, contextlib, copy, csv, gc, json, math, os, socket, subprocess, sys, tempfile, time
from pathlib import Path

import torch

SECTIONS = ['precision', 'train', 'compile', 'ddp', 'data']
# The most seconds each section may take on the GPU (the whole run is also held to --budget).
CAPS = dict(precision=60, train=100, compile=180, ddp=70, data=70)
SMOKE_CAPS = dict(precision=150, train=150, compile=200, ddp=200, data=120)   # generous: a busy 2-core CI machine
HERE = Path(__file__).resolve()


def sizes(smoke: bool) -> dict:
    "Problem sizes of the real check and of the CPU smoke run."
    if smoke:
        return dict(arch='resnet10t', bb=dict(output_stride=8), img=32, C=6, T=16, A=32, ff=64, heads=4,
                    prec_bs=2, train_bs=2, warm=1, max_steps=3, seconds=5., compile_backend='aot_eager',
                    ddp_steps=4, ddp_bs=4, ddp_workers=0, data_workers=[2], data_img=64, data_bs=8,
                    data_unique=16, data_repeat=4, data_seconds=5.)
    return dict(arch='resnet101', bb={}, img=448, C=80, T=768, A=1024, ff=2048, heads=8,
                prec_bs=4, train_bs=32, warm=3, max_steps=60, seconds=12., compile_backend='inductor',
                ddp_steps=20, ddp_bs=32, ddp_workers=4, data_workers=[8, 16], data_img=448, data_bs=32,
                data_unique=256, data_repeat=24, data_seconds=12.)


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def _gib(n): return f'{n / 2**30:.2f} GiB'


class Rows:
    "Rows of one section, written to a JSON file after each, so a killed section keeps what it finished."
    def __init__(self, path): self.path, self.rows = Path(path), []
    def add(self, case, status='ok', **values):
        self.rows.append(dict(case=case, status=status, result=', '.join(f'{k} {v}' for k, v in values.items())))
        self.path.write_text(json.dumps(self.rows))
    def failed(self, case, e):
        msg = f'{type(e).__name__}: {e}'.replace('\n', ' ').replace('|', '/')
        self.add(case, 'FAILED', why=msg[:300])


def _model(S, impl, dev, **kw):
    from sgre.model import SGRE
    torch.manual_seed(0)
    emb = torch.randn(S['C'], S['T'])
    kw = dict(dict(attn_dim=S['A'], ff_dim=S['ff'], num_heads=S['heads'], pretrained=False), **kw)
    return SGRE(S['arch'], S['C'], embeddings=emb, attn_impl=impl, **S['bb'], **kw).to(dev)


# ---------------------------------------------------------------------------------------------- 1. precision
def _rel(a, b): return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


def _grad_err(model, ref, only=''):
    num = den = 0.
    refp = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        if not n.startswith(only) or p.grad is None: continue
        r = refp[n].grad.double()
        num += (p.grad.double() - r).pow(2).sum().item(); den += r.pow(2).sum().item()
    return math.sqrt(num / den) if den else float('nan')


def section_precision(S, dev, rows):
    torch.backends.cudnn.benchmark = False
    base = _model(S, 'fused', dev, pos=True, dropout=0., head_dropout=0.).train()
    ref = copy.deepcopy(base).double(); ref.attention.impl = 'naive'
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(S['prec_bs'], 3, S['img'], S['img'], generator=gen).to(dev)

    def run(model, dtype, x):
        model.zero_grad(set_to_none=True)
        scale = 1024. if dtype == torch.float16 else 1.   # a fixed loss scale, as GradScaler would apply
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype in (torch.float16, torch.bfloat16) else contextlib.nullcontext()
        with ctx: out = model(x)
        out = [o.double() for o in out]
        # gradients of a random linear function of the semantic logits and the attention; the final logits are
        # left out: they are a maximum over tokens, whose argmax may move in half precision (the notebook
        # checks that head's gradient by gradcheck)
        loss = sum((o * w).sum() for o, w in zip(out[1:], weights(out)[1:]))
        (loss * scale).backward()
        if scale != 1.:
            for p in model.parameters():
                if p.grad is not None: p.grad.div_(scale)
        return [o.detach() for o in out]

    cache = {}
    def weights(out):
        if 'w' not in cache:
            cache['w'] = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dev) / math.sqrt(o.numel()) for o in out]
        return cache['w']

    ref_out = run(ref, torch.float64, x.double())
    for dname, dtype in (('float32', torch.float32), ('autocast float16', torch.float16), ('autocast bfloat16', torch.bfloat16)):
        errs = {}
        for impl in ('naive', 'fused'):
            case = f'{dname}, {impl}'
            try:
                base.attention.impl = impl
                out = run(base, dtype, x)
                e = dict(logits=_rel(out[0], ref_out[0]), sem=_rel(out[1], ref_out[1]), attn=_rel(out[2], ref_out[2]),
                         grad=_grad_err(base, ref), grad_attention=_grad_err(base, ref, 'attention.'))
                errs[impl] = e
                bad = [k for k, v in e.items() if not math.isfinite(v)]
                if impl == 'fused' and 'naive' in errs:   # the fused attention must not be less accurate than the original
                    bad += [k for k, v in e.items() if v > 2 * errs['naive'][k] + 1e-6]
                rows.add(case, 'CHECK ' + '/'.join(bad) if bad else 'ok', **{f'{k} err': f'{v:.1e}' for k, v in e.items()})
            except Exception as ex: rows.failed(case, ex)
            finally:
                if dev.type == 'cuda': torch.cuda.empty_cache()


# -------------------------------------------------------------------------------------------------- 2. train
def _train_one(S, dev, x, y, impl, amp, compile_) -> dict:
    "Images/s and peak memory of plain PyTorch training steps; everything it allocates is freed on return."
    from sgre.loss import SGRELoss, make_loss
    model = _model(S, impl, dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = SGRELoss(make_loss('asl'), lamda=1.)
    scaler = torch.amp.GradScaler(dev.type) if amp else None
    fwd = model
    if compile_:
        torch._dynamo.reset()
        from torch._dynamo.utils import counters
        counters.clear()
        fwd = torch.compile(model, backend=S['compile_backend'])

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(fwd(x), y)
        if scaler is None: loss.backward(); opt.step()
        else: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        return loss.detach()

    t0 = time.perf_counter()
    for _ in range(S['warm']): loss = step()
    _sync(dev)
    warm_s = time.perf_counter() - t0
    if not torch.isfinite(loss): raise RuntimeError(f'the loss is {loss.item()} after warm-up')
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    n, t0 = 0, time.perf_counter()
    while n < S['max_steps'] and (n < 2 or time.perf_counter() - t0 < S['seconds']):   # at most `seconds`, at least 2 steps
        step(); n += 1
    _sync(dev)
    dt = time.perf_counter() - t0
    vals = {'images/s': f"{n * x.shape[0] / dt:.1f}", 'steps timed': n}
    vals['peak memory'] = _gib(torch.cuda.max_memory_allocated(dev)) if dev.type == 'cuda' else 'n/a (CPU)'
    if compile_:
        vals['compile + warm-up'] = f'{warm_s:.0f} s'
        vals['graph breaks'] = sum(counters['graph_break'].values())
    return vals


def _train_rows(S, dev, rows, variants):
    B = S['train_bs']
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, 3, S['img'], S['img'], generator=gen).to(dev)
    y = (torch.rand(B, S['C'], generator=gen) < 0.1).float().to(dev)
    for case, impl, amp, compile_ in variants:
        try: rows.add(case, **_train_one(S, dev, x, y, impl, amp, compile_))
        except Exception as ex: rows.failed(case, ex)
        gc.collect()
        if dev.type == 'cuda': torch.cuda.empty_cache()


def section_train(S, dev, rows):
    torch.backends.cudnn.benchmark = True
    _train_rows(S, dev, rows, [('naive head', 'naive', False, False), ('fused head', 'fused', False, False),
                               ('fused + AMP (float16, GradScaler)', 'fused', True, False)])


def section_compile(S, dev, rows):
    torch.backends.cudnn.benchmark = True
    _train_rows(S, dev, rows, [(f"fused + AMP + torch.compile ({S['compile_backend']})", 'fused', True, True)])


# ---------------------------------------------------------------------------------------------------- 3. ddp
def run_group(cmd, timeout, **kw):
    "`subprocess.run` in a new process group, all of which is killed on timeout (`accelerate launch` has children)."
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError): os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def section_ddp(S, dev, rows, smoke):
    case = f"accelerate launch --num_processes 1, {'gloo (CPU)' if smoke else 'NCCL'}, {S['ddp_steps']} steps"
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / 'child.json'
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', '1', '--num_machines', '1',
               '--mixed_precision', 'no', '--dynamo_backend', 'no', *(['--cpu'] if smoke else []),
               str(HERE), '--ddp-child', '--json-out', str(out), *(['--cpu-smoke'] if smoke else [])]
        env = dict(os.environ, PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
        try:
            res = run_group(cmd, _ddp_timeout, cwd=d, env=env)
        except subprocess.TimeoutExpired:
            rows.add(case, 'FAILED', why=f'timed out after {_ddp_timeout:.0f} s'); return
        if res.returncode != 0 or not out.exists():
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            rows.add(case, 'FAILED', why=f'exit {res.returncode}: ' + ' / '.join(tail).replace('|', '/')[:300]); return
        v = json.loads(out.read_text())
        status = 'ok' if v['ran'] == S['ddp_steps'] and (smoke or v['sync_bn'] > 0) and v['wrapped_ddp'] else 'CHECK'
        rows.add(case, status, **{'steps/s': f"{v['steps_per_s']:.2f}", 'backend': v['backend'], 'world size': v['world'],
                                  'SyncBatchNorm layers': v['sync_bn'], 'BatchNorm layers left': v['plain_bn'],
                                  'model in DDP': v['wrapped_ddp']})


_ddp_timeout = 80.


def ddp_child(S, out_path, smoke=False):
    "Runs under `accelerate launch`: one process, a process group of one, sgre's Learner in fastai's distrib_ctx."
    import torch.distributed as dist
    from torch import nn
    from accelerate import PartialState
    from fastai.callback.core import Callback
    from fastai.learner import CancelFitException
    from sgre.data import prepare_digits, sgre_dls
    from sgre.train import fit_recipe, sgre_learner
    cuda = torch.cuda.is_available() and not smoke
    for k, v in dict(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), RANK='0', WORLD_SIZE='1', LOCAL_RANK='0').items():
        os.environ.setdefault(k, v)   # `accelerate launch` with one process sets none of them
    state = PartialState(cpu=not cuda)   # joins the group: NCCL on CUDA, gloo on the CPU
    steps, res = S['ddp_steps'], dict(ran=0, steps_per_s=float('nan'), sync_bn=0, plain_bn=0, wrapped_ddp=False)
    res.update(backend=dist.get_backend() if dist.is_initialized() else 'none',
               world=dist.get_world_size() if dist.is_initialized() else 1)

    class WrapDDP(Callback):
        "After fastai's DistributedTrainer (order 11): with one process accelerate leaves the model unwrapped."
        order = 11.5
        def before_fit(self):
            if dist.is_initialized() and not isinstance(self.learn.model, nn.parallel.DistributedDataParallel):
                ids = [torch.cuda.current_device()] if cuda else None
                self.learn.model = nn.parallel.DistributedDataParallel(self.learn.model, device_ids=ids)

    class Probe(Callback):
        order = 90
        def before_fit(self):
            m = self.learn.model
            res['wrapped_ddp'] = isinstance(m, nn.parallel.DistributedDataParallel)
            mods = list(m.modules())
            res['sync_bn'] = sum(isinstance(x, nn.SyncBatchNorm) for x in mods)
            res['plain_bn'] = sum(isinstance(x, nn.modules.batchnorm._BatchNorm) and not isinstance(x, nn.SyncBatchNorm) for x in mods)
            self.times = []
        def after_batch(self):
            if not self.training: return
            if cuda: torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            res['ran'] = len(self.times)
            if len(self.times) >= steps: raise CancelFitException

    with tempfile.TemporaryDirectory() as d:
        bs = S['ddp_bs']
        prepare_digits(Path(d) / 'digits', n_train=bs * (steps + 2), n_test=bs, size=64, seed=0)
        dls = sgre_dls(Path(d) / 'digits', img_size=64, bs=bs, num_workers=S['ddp_workers'], flip=False, augment=False,
                       seed=0, device=state.device)
        learn = sgre_learner(dls, 'resnet10t', None, lr=1e-3, pretrained=False, img_size=64, output_stride=8,
                             num_layers=0, attn_dim=256, pos=True, ema_decay=0.98)
        learn.add_cbs([WrapDDP(), probe := Probe()])
        with learn.no_bar(), learn.distrib_ctx(sync_bn=cuda, cpu=not cuda):
            fit_recipe(learn, 1, lr=1e-3)
    t = probe.times
    if len(t) > 3: res['steps_per_s'] = (len(t) - 2) / (t[-1] - t[1])   # steps 3.. (the first two warm up)
    Path(out_path).write_text(json.dumps(res))
    if dist.is_initialized(): dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------- 4. data
def _jpeg(rng, w=500, h=375):
    "A photo-like JPEG source: a smooth colour field plus fine noise (decoding costs what a photo costs)."
    import numpy as np
    from PIL import Image
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(coarse, np.float32) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def section_data(S, dev, rows):
    import numpy as np
    from sgre.data import prepare_csv, sgre_dls
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); (d / 'images').mkdir()
        rng = np.random.default_rng(0)
        lines = ['fname,labels']
        for i in range(S['data_unique']):
            first = d / 'images' / f'{i:05d}_0.jpg'
            _jpeg(rng).save(first, quality=90)
            for r in range(1, S['data_repeat']):   # more names for the same bytes: enough batches for 16 workers
                os.link(first, d / 'images' / f'{i:05d}_{r}.jpg')
        for r in range(S['data_repeat']):
            for i in range(S['data_unique']):
                labels = ' '.join(f'c{k}' for k in rng.choice(20, rng.integers(1, 4), replace=False))
                lines.append(f'{i:05d}_{r}.jpg,{labels}')
        (d / 'data.csv').write_text('\n'.join(lines) + '\n')
        prepared = prepare_csv(d / 'data.csv', d / 'images', d / 'prepared', valid_pct=0.05)
        for w in S['data_workers']:
            case = f"{w} workers, {S['data_img']} px, batch {S['data_bs']}"
            try:
                dls = sgre_dls(prepared, img_size=S['data_img'], bs=S['data_bs'], num_workers=w, seed=0, device=dev)
                n, it = 0, iter(dls.train)
                next(it)                  # all workers start together; time from the first batch on
                _sync(dev)
                t0 = time.perf_counter()
                for xb, yb in it:
                    n += len(xb)
                    if time.perf_counter() - t0 > S['data_seconds']: break
                _sync(dev)
                dt = time.perf_counter() - t0
                if not n: raise RuntimeError('only one batch: too few images')
                rows.add(case, **{'images/s': f'{n / dt:.1f}', 'images timed': n,
                                  'pipeline': 'squish, flip, Cutout, RandAugment, normalise'})
                del it, dls
            except Exception as ex: rows.failed(case, ex)


# ---------------------------------------------------------------------------------------------- the driver
def run_section(name, smoke, out_path):
    S = sizes(smoke)
    dev = torch.device('cpu' if smoke else 'cuda')
    rows = Rows(out_path)
    if smoke: torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        if name == 'precision': section_precision(S, dev, rows)
        elif name == 'train': section_train(S, dev, rows)
        elif name == 'compile': section_compile(S, dev, rows)
        elif name == 'ddp': section_ddp(S, dev, rows, smoke)
        elif name == 'data': section_data(S, dev, rows)
    except Exception as ex: rows.failed('(section)', ex)


def expected_rows(name, smoke): return dict(precision=6, train=3, compile=1, ddp=1, data=len(sizes(smoke)['data_workers']))[name]


def header(smoke):
    try:
        import sgre
        version = sgre.__version__
    except Exception as e: version = f'not importable ({type(e).__name__})'
    try:
        if smoke: dev = f'CPU smoke run (no GPU; tiny sizes), {os.cpu_count()} cores'
        else:
            p = torch.cuda.get_device_properties(0)
            dev = f'{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB)'
        flags = (f'cuDNN {torch.backends.cudnn.version()}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}, '
                 f'matmul TF32 {torch.backends.cuda.matmul.allow_tf32}') if not smoke else 'CPU'
    except Exception as e: dev, flags = f'(device query failed: {type(e).__name__}: {e})', ''
    return f'## sgre GPU check: {dev}\n\ntorch {torch.__version__}, CUDA {torch.version.cuda or "none"}, {flags}, sgre {version}\n'


def main(argv=None):
    global _ddp_timeout
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='gpu_check.csv', help='the CSV file to write (default: gpu_check.csv here)')
    ap.add_argument('--budget', type=float, default=None, help='seconds for the whole run (default 460; smoke 800)')
    ap.add_argument('--cpu-smoke', action='store_true', help='every section on the CPU at tiny sizes')
    ap.add_argument('--only', nargs='*', choices=SECTIONS, help='run only these sections')
    ap.add_argument('--section', choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument('--ddp-child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--json-out', help=argparse.SUPPRESS)
    ap.add_argument('--timeout', type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.ddp_child: return ddp_child(sizes(a.cpu_smoke), a.json_out, a.cpu_smoke)
    if a.section:
        if a.timeout: _ddp_timeout = a.timeout
        return run_section(a.section, a.cpu_smoke, a.json_out)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print(f'No CUDA GPU here (torch {torch.__version__}): nothing to check. '
              f'Run it on a GPU machine, or with --cpu-smoke to try the code paths on the CPU.')
        return 0
    budget = a.budget or (800. if a.cpu_smoke else 460.)
    caps = SMOKE_CAPS if a.cpu_smoke else CAPS
    start, results = time.monotonic(), []
    for name in a.only or SECTIONS:
        left = budget - (time.monotonic() - start)
        cap = min(caps[name], left)
        if cap < 10:
            results.append(dict(section=name, case='(section)', status='FAILED', result='why not run: the time budget is spent'))
            continue
        with tempfile.TemporaryDirectory() as d:
            jf = Path(d) / 'rows.json'
            cmd = [sys.executable, str(HERE), '--section', name, '--json-out', str(jf), '--timeout', str(cap - 5),
                   *(['--cpu-smoke'] if a.cpu_smoke else [])]
            t0 = time.monotonic()
            err = None
            try:
                res = run_group(cmd, cap)
                if res.returncode != 0:
                    tail = (res.stderr or res.stdout).strip().splitlines()[-2:]
                    err = f'exit {res.returncode}: ' + ' / '.join(tail)
            except subprocess.TimeoutExpired:
                err = f'timed out after {cap:.0f} s'
            rows = json.loads(jf.read_text()) if jf.exists() else []
            if err and len(rows) < expected_rows(name, a.cpu_smoke):
                rows.append(dict(case='(rest of section)', status='FAILED', result='why ' + err.replace('|', '/')[:300]))
            for r in rows: results.append(dict(section=name, **r))
            print(f'[{name}: {time.monotonic() - t0:.0f} s]', file=sys.stderr, flush=True)
    table = [header(a.cpu_smoke), '| section | case | status | result |', '|---|---|---|---|']
    table += [f"| {r['section']} | {r['case']} | {r['status']} | {r['result']} |" for r in results]
    table.append(f'\n{time.monotonic() - start:.0f} s in all.')
    print('\n'.join(table))
    with open(a.out, 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, fieldnames=['section', 'case', 'status', 'result'])
        w.writeheader(); w.writerows(results)
    print(f'(saved as {a.out})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
