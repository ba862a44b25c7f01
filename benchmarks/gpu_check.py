"""GPU check for sgre: one command, at most 8 minutes on one GPU, one Markdown table (also saved as CSV).

Each section runs in its own process under its own time cap, so a crash, an out-of-memory error or a hang in one
gives a FAILED row and the others still run. The caps on a GPU (seconds) add up to 455, less than the default
`--budget` of 480 (8 minutes; a section never gets more than what is left of it):

    precision 35, head 130, learner 30, loader 50, resume 30, accum 30, compile 115, ddp 35

The sections that train use sgre's GPU defaults (`sgre.train.gpu_precision`: TF32 matrix products and convolutions,
cuDNN autotuning), so "fp32" there is what `sgre_train` without `--amp` runs; "fp16" is float16 autocast with
`torch.amp.GradScaler` (`--amp fp16`, the seed's `--amp`), "bf16" bfloat16 autocast (`--amp bf16`). Model-size
sections use ResNet-101 at 448 px with random weights (nothing is downloaded).

1. precision: `sgre.model.SGRE` (ResNet-101 at 448 px, B=4, C=80, train mode, dropout off) with the naive (the
   paper's), fused (per class) and blocked (classes in blocks; here blocks of 7 classes, so that several blocks and
   an uneven last one are exercised) attention, in float32 (PyTorch's defaults: the header says whether cuDNN uses
   TF32) and under float16 and bfloat16 autocast. Each output and the gradients (all parameters; the attention's own
   alone) of a fixed random linear function of the semantic logits and the attention are compared with a float64
   copy using the naive attention: relative error ||x - ref|| / ||ref||. (The final logits are left out of that
   function: a maximum over tokens, whose argmax can move in half precision.) CHECK where fused or blocked is more
   than twice as far from the reference as naive.
2. head: a plain PyTorch training step (forward, sgre's loss, backward, AdamW) of ResNet-101 at 448 px with
   C = 80 and C = 1,000 random label embeddings (T = 768), for each precision (bf16, fp16, fp32) and head (fused,
   blocked, naive): images/s and peak `torch.cuda.max_memory_allocated` at the largest batch that fits of 128, 64,
   32, 16, 8, tried downwards, catching CUDA's out-of-memory error. A search starts at the fused head's batch in
   the precision before (fp16 and fp32 need at least bf16's memory) and, for blocked and naive, at the fused
   head's batch in the same precision (they need at least its memory); a naive batch is skipped untried when three
   of its (B, C, N, A) tensors, which backward holds together, plus the fused head's memory scaled to that batch
   exceed the card. Rows in that order, bf16 first, so that a section cut short by its cap loses fp32.
3. learner: the whole fastai step of `sgre.train.sgre_learner` (EMA, gradient accumulation and finite-loss
   callbacks, one-cycle schedule, recorder, fastai's optimizer wrapper; bf16, attention 'auto') against the bare
   step (the same model, `torch.optim.AdamW`) on the same batch (32, C = 80): seconds per step, and their ratio.
   The Learner is fed that one batch already on the GPU, so no data loading is timed. Bare, Learner, bare again:
   the ratio is to the mean of the two bare runs.
4. loader: a short real `sgre.experiment.train` (`--amp bf16`, batch 32, 448 px, the default loader workers,
   `sgre.data.default_workers()`) on synthetic 640x480 JPEGs with the seed's augmentation: its training images/s
   (after the first batches), the loader alone (same loaders) and the model step alone (same model, batch and
   precision). Data keeps up when the loader alone is faster than the model step.
5. resume: a tiny run (resnet10t, 32 px digits) trained one epoch on the GPU, then `sgre.experiment.resume`d for
   one step: every optimizer state tensor must be on its parameter's device and dtype after that step. (In the
   smoke run a move to float64 when the fit starts stands in for the move to the GPU, as in the experiment
   notebook's test.)
6. accum: `--accum-steps 2` (micro-batches of 16) against batches of 32, two optimizer steps, through
   `parse_config` and `build_learner` (ResNet-101 at 448 px on the digits; `--strict-fp32`; BatchNorm on its
   running statistics and dropout off, as the training notebook's float64 test): relative difference of the second
   step's gradient (the first one's is zero inside the residual branches: timm starts their last BatchNorm at
   zero) and the learning rates decide: ok when the gradients agree to 1e-5 (relative norm; float32 is not
   bit-equal across batch shapes) and the rates are equal. The largest weight and EMA differences after the steps
   are reported, not judged: AdamW divides each step by the gradient's size, so a gradient that is zero in exact
   arithmetic but rounding noise in float32 (the attention's output bias: a shift of every score leaves the softmax
   unchanged) still moves its weight by about the learning rate, differently in the two runs.
7. compile: the training step eager and with the model compiled as `--compile` does (`model.compile()`, inductor;
   bf16, batch 32, C = 80): graphs and graph breaks (torch._dynamo's counters; expect 1 and 0), compilation time,
   images/s and the speed-up over eager.
8. ddp: `accelerate launch --num_processes 1` running this script's `--ddp-child`: a process group of one (NCCL),
   sgre's Learner trained 20 steps inside `learn.distrib_ctx(sync_bn=True)`: steps/s, the backend, SyncBatchNorm
   layers. (With one process accelerate does not wrap the model in DDP itself, so the child does.)

Under the table, one verdict line per section (also a `verdict` row in the CSV); the card (GPU, memory, compute
capability, torch / CUDA / cuDNN versions, TF32 flags) heads the table and is the CSV's first row.

Without a CUDA GPU it prints one line and exits 0 (nothing written). `--cpu-smoke` runs every section on the CPU at
tiny sizes (resnet10t, 32 px for the model, 64 px for the loader, C = 4 and 12, batch 2, a couple of steps, one
thread; the batch search tries 4 then 2, with an out-of-memory error simulated at 4; `torch.compile` with
`aot_eager`; the launch with gloo and without SyncBatchNorm, which needs CUDA) to prove the code paths; its numbers
mean nothing.

Usage: python benchmarks/gpu_check.py [--out gpu_check.csv] [--budget 480] [--cpu-smoke] [--only SECTION ...]
"""
import argparse, contextlib, copy, csv, gc, json, math, os, socket, subprocess, sys, tempfile, time
from pathlib import Path

import torch

SECTIONS = ['precision', 'head', 'learner', 'loader', 'resume', 'accum', 'compile', 'ddp']
# The most seconds each section may take on the GPU; they add up to less than BUDGET (the parent's own start-up and
# writing fit in the rest). The whole run is also held to --budget.
CAPS = dict(precision=35, head=130, learner=30, loader=50, resume=30, accum=30, compile=115, ddp=35)
BUDGET = 480.
SMOKE_CAPS = dict(precision=150, head=250, learner=150, loader=200, resume=200, accum=150, compile=250, ddp=250)  # a busy CI machine
SMOKE_BUDGET = 800.
assert sum(CAPS.values()) < BUDGET
HERE = Path(__file__).resolve()
IMPLS = ('fused', 'blocked', 'naive')     # the fused head first: the others need at least its memory
PRECISIONS = ('bf16', 'fp16', 'fp32')   # rising memory: each search starts where the one before ended
_AUTOCAST = dict(fp32=None, fp16=torch.float16, bf16=torch.bfloat16)


def sizes(smoke: bool) -> dict:
    "Problem sizes of the real check and of the CPU smoke run."
    if smoke:
        return dict(arch='resnet10t', bb=dict(output_stride=8), stride=8, img=32, C=6, T=16, A=32, ff=64, heads=4,
                    prec_bs=2, prec_block=4, warm=1, min_steps=2, max_steps=2, seconds=5.,
                    head_C=(4, 12), head_batches=(4, 2), fake_oom_above=2, head_reserve=0.,
                    bs=2, compile_backend='aot_eager',
                    loader_img=64, loader_bs=4, loader_unique=12, loader_repeat=2, loader_warm=1, loader_steps=3,
                    tiny_img=32, tiny_bs=16, digits_train=64, digits_test=16,
                    accum=dict(arch='resnet10t', img=32, bs=8, extra=['--output-stride', '8', '--attn-dim', '32',
                                                                       '--num-heads', '2']),
                    ddp_steps=4, ddp_bs=4, ddp_workers=0)
    return dict(arch='resnet101', bb={}, stride=32, img=448, C=80, T=768, A=1024, ff=2048, heads=8,
                prec_bs=4, prec_block=7, warm=2, min_steps=3, max_steps=20, seconds=1.5,
                head_C=(80, 1000), head_batches=(128, 64, 32, 16, 8), fake_oom_above=None, head_reserve=4.,
                bs=32, compile_backend='inductor',
                loader_img=448, loader_bs=32, loader_unique=128, loader_repeat=10, loader_warm=5, loader_steps=25,
                tiny_img=32, tiny_bs=16, digits_train=64, digits_test=16,
                accum=dict(arch='resnet101', img=448, bs=32, extra=['--output-stride', '32', '--attn-dim', '1024',
                                                                    '--num-heads', '8', '--num-layers', '1']),
                ddp_steps=20, ddp_bs=32, ddp_workers=4)


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def _gib(n): return f'{n / 2**30:.2f} GiB'


def _peak(dev): return _gib(torch.cuda.max_memory_allocated(dev)) if dev.type == 'cuda' else 'n/a (CPU)'


def _free(dev):
    gc.collect()
    if dev.type == 'cuda': torch.cuda.empty_cache()


class Rows:
    "A section's rows and its verdict, written to a JSON file after each change, so a killed section keeps what it finished."
    def __init__(self, path, deadline=math.inf): self.path, self.rows, self.deadline, self._verdict = Path(path), [], deadline, None
    def _write(self):   # whole or not at all: the section may be killed at any moment
        tmp = self.path.with_name(self.path.name + '.tmp')
        tmp.write_text(json.dumps(self.rows + ([self._verdict] if self._verdict else [])))
        os.replace(tmp, self.path)
    def add(self, case, status='ok', **values):
        self.rows.append(dict(case=case, status=status, result=', '.join(f'{k} {v}' for k, v in values.items())))
        self._write()
    def failed(self, case, e):
        msg = f'{type(e).__name__}: {e}'.replace('\n', ' ').replace('|', '/')
        self.add(case, 'FAILED', why=msg[:300])
    def verdict(self, text, status='ok'):
        "The section's one-line verdict (replaces an earlier one: a section updates it as its results come in)."
        self._verdict = dict(case='verdict', status=status, result=text.replace('|', '/'))
        self._write()
    def left(self): return self.deadline - time.monotonic()


def _model(S, impl, dev, C=None, **kw):
    from sgre.model import SGRE
    C = C or S['C']
    torch.manual_seed(0)
    emb = torch.randn(C, S['T'])
    kw = dict(dict(attn_dim=S['A'], ff_dim=S['ff'], num_heads=S['heads'], pretrained=False), **kw)
    return SGRE(S['arch'], C, embeddings=emb, attn_impl=impl, **S['bb'], **kw).to(dev)


def _batch(S, dev, B, C, seed=2):
    "A random batch made on the device (a 128-image batch at 448 px is 300 MiB: no host round trip)."
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn(B, 3, S['img'], S['img'], generator=gen, device=dev)
    y = (torch.rand(B, C, generator=gen, device=dev) < 0.1).float()
    return x, y


def _timed(step, S, dev, warm=None) -> dict:
    "Run `step` `warm` times, then time it: at least `min_steps`, at most `max_steps`, stopping after `seconds`."
    for _ in range(S['warm'] if warm is None else warm): loss = step()
    _sync(dev)
    if not torch.isfinite(loss): raise RuntimeError(f'the loss is {loss.item()} after warm-up')
    if dev.type == 'cuda': torch.cuda.reset_peak_memory_stats(dev)
    n, t0 = 0, time.perf_counter()
    while n < S['max_steps'] and (n < S['min_steps'] or time.perf_counter() - t0 < S['seconds']):
        step(); n += 1
    _sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == 'cuda' else 0
    return dict(n=n, s=(time.perf_counter() - t0) / n, peak=_peak(dev), peak_bytes=peak)


def _bare_step(model, opt, loss_fn, x, y, prec, dev, scaler=None, fail_above=None):
    "One plain training step: forward under autocast (if any), loss, backward (through `scaler` for fp16), AdamW."
    dtype = _AUTOCAST[prec]
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(x)
            if fail_above is not None and len(x) > fail_above:   # the smoke run's stand-in for a full GPU
                raise torch.OutOfMemoryError(f'simulated: batch {len(x)} > {fail_above}')
            loss = loss_fn(out, y)
        if scaler is None: loss.backward(); opt.step()
        else: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
        return loss.detach()
    return step


def _loss_fn():
    from sgre.loss import SGRELoss, make_loss
    return SGRELoss(make_loss('asl'), lamda=1.)


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
    from sgre.model import attn_policy
    torch.backends.cudnn.benchmark = False
    base = _model(S, 'fused', dev, pos=True, dropout=0., head_dropout=0.).train()
    ref = copy.deepcopy(base).double(); ref.attention.impl = 'naive'
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(S['prec_bs'], 3, S['img'], S['img'], generator=gen).to(dev)
    N = (S['img'] // S['stride']) ** 2
    block = S['prec_bs'] * N * S['A'] * 4 * S['prec_block']   # bytes of prec_block classes' float32 tanh values

    def run(model, dtype, x):
        model.zero_grad(set_to_none=True)
        scale = 1024. if dtype == torch.float16 else 1.   # a fixed loss scale, as GradScaler would apply
        ctx = torch.autocast(dev.type, dtype=dtype) if dtype in (torch.float16, torch.bfloat16) else contextlib.nullcontext()
        with ctx, attn_policy(block_bytes=block): out = model(x)
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
    checks, worst = [], {}
    for dname, dtype in (('float32', torch.float32), ('autocast float16', torch.float16), ('autocast bfloat16', torch.bfloat16)):
        errs = {}
        for impl in ('naive', 'fused', 'blocked'):
            case = f'{dname}, {impl}'
            try:
                base.attention.impl = impl
                out = run(base, dtype, x)
                e = dict(logits=_rel(out[0], ref_out[0]), sem=_rel(out[1], ref_out[1]), attn=_rel(out[2], ref_out[2]),
                         grad=_grad_err(base, ref), grad_attention=_grad_err(base, ref, 'attention.'))
                errs[impl] = e
                bad = [k for k, v in e.items() if not math.isfinite(v)]
                if impl != 'naive' and 'naive' in errs:   # the reformulations must not be less accurate than the original
                    bad += [k for k, v in e.items() if v > 2 * errs['naive'][k] + 1e-6]
                if bad: checks.append(case)
                worst[dname] = max(worst.get(dname, 0.), e['grad'])
                rows.add(case, 'CHECK ' + '/'.join(bad) if bad else 'ok', **{f'{k} err': f'{v:.1e}' for k, v in e.items()})
            except Exception as ex: rows.failed(case, ex); checks.append(case)
            finally: _free(dev)
    worst_txt = ', '.join(f'{k.replace("autocast ", "")} {v:.0e}' for k, v in worst.items())
    if checks: rows.verdict(f'CHECK {", ".join(checks)}: less accurate than the naive head (or failed); gradient errors {worst_txt}', 'CHECK')
    else: rows.verdict(f'fused and blocked are as accurate as the naive head against float64 in every precision '
                       f'(largest gradient error: {worst_txt})')


# --------------------------------------------------------------------------------------------------- 2. head
def _largest_batch(try_batch, candidates, skip, dev):
    "The first batch of `candidates` (largest first) that `try_batch` runs without running out of memory: (batch, result, notes)."
    notes = []
    for b in candidates:
        why = skip(b)
        if why: notes.append(f'{b} skipped: {why}'); continue
        oom = None
        try: return b, try_batch(b), notes
        except torch.OutOfMemoryError as e: oom = ' (simulated)' if 'simulated' in str(e) else ''
        _free(dev)   # outside the except block: the traceback (and the graph it holds) is gone
        notes.append(f'{b} out of memory{oom}')
    return None, None, notes


def section_head(S, dev, rows):
    from sgre.train import gpu_precision
    gpu_precision(dev)
    total = torch.cuda.get_device_properties(dev).total_memory if dev.type == 'cuda' else math.inf
    N = (S['img'] // S['stride']) ** 2
    loss_fn, res, models = _loss_fn(), {}, {C: _model(S, 'fused', dev, C=C).train() for C in S['head_C']}
    fused = {}   # C -> (batch, peak bytes) of the fused head in the precision before
    for prec in PRECISIONS:   # bf16, fp16, fp32: each needs at least the memory of the one before
        item = 2 if prec != 'fp32' else 4
        for C, model in models.items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
            for impl in IMPLS:
                case = f'C={C}, {impl}, {prec}'
                if rows.left() < S['head_reserve']:
                    rows.add(case, 'SKIPPED', why="the section's time cap was reached"); continue
                model.attention.impl = impl
                bound = fused.get(C, (None,))[0]
                cands = [b for b in S['head_batches'] if bound is None or b <= bound]
                def skip(b):
                    # a naive batch that cannot fit: three (B, C, N, A) tensors (tanh(U V), the hidden layer's output and its
                    # gradient live together in backward) plus the fused head's memory scaled down to this batch exceed the card
                    if impl != 'naive' or C not in fused: return None
                    fb, fpeak = fused[C]
                    need = 3 * b * C * N * S['A'] * item + fpeak * b / fb
                    return f'needs at least {_gib(need)}' if need > total else None
                def try_batch(b):
                    x, y = _batch(S, dev, b, C)
                    scaler = torch.amp.GradScaler(dev.type) if prec == 'fp16' else None
                    return _timed(_bare_step(model, opt, loss_fn, x, y, prec, dev, scaler, S['fake_oom_above']), S, dev)
                try:
                    b, r, notes = _largest_batch(try_batch, cands, skip, dev)
                    if impl == 'fused' and b is not None: fused[C] = (b, r['peak_bytes'])
                    extra = {'tried': '; '.join(notes)} if notes else {}
                    if b is None: rows.add(case, 'OOM', batch=f'none fits (of {cands[0]} to {cands[-1]})', **extra)
                    else:
                        res[C, impl, prec] = (b, b / r['s'])
                        rows.add(case, batch=b, **{'images/s': f"{b / r['s']:.1f}", 'step': f"{r['s'] * 1e3:.0f} ms",
                                                   'peak memory': r['peak'], 'steps timed': r['n']}, **extra)
                except Exception as ex: rows.failed(case, ex)
                model.zero_grad(set_to_none=True)
                _free(dev)
                rows.verdict(*_head_verdict(res, S['head_C']))
            del opt   # the optimizer's state goes with it: the other model's batch search gets the memory
            _free(dev)


def _head_verdict(res, Cs):
    "One line: is 'auto' (blocked on a GPU) the fastest head, by how much against fused, and the largest batches."
    parts, status = [], 'ok'
    for C in Cs:
        for prec in ('bf16', 'fp16', 'fp32'):
            got = {impl: res[C, impl, prec] for impl in IMPLS if (C, impl, prec) in res}
            if 'blocked' in got: break
        else: continue
        best = max(got, key=lambda k: got[k][1])
        txt = f'C={C} {prec}: blocked {got["blocked"][1]:.0f} img/s (batch {got["blocked"][0]})'
        for other in ('fused', 'naive'):
            if other in got: txt += f', {got["blocked"][1] / got[other][1]:.2f}x {other} (batch {got[other][0]})'
        if best != 'blocked' and got[best][1] > 1.1 * got['blocked'][1]:
            txt += f' -- {best} is faster'; status = 'CHECK'
        parts.append(txt)
    if not parts: return 'no head step ran', 'FAILED'
    head = "auto's GPU choice (blocked) is the fastest head" if status == 'ok' else "auto's GPU choice (blocked) is NOT the fastest head"
    return f'{head}: ' + '; '.join(parts), status


# ------------------------------------------------------------------------------------------------ 3. learner
class _SameBatch:
    "A stand-in training loader: the same batch (already on the device) `n` times."
    def __init__(self, b, n): self.b, self.n = b, n
    def __len__(self): return self.n
    def __iter__(self): return (self.b for _ in range(self.n))
    def to(self, device): return self


def _stopper(n, times, dev, learn_box=None):
    "A callback recording the time after each training batch and stopping the fit after `n` of them."
    from fastai.callback.core import Callback
    from fastai.learner import CancelFitException
    class _Stop(Callback):
        order = 95
        def before_fit(self):
            if learn_box is not None: learn_box.append(self.learn)
        def after_batch(self):
            if not self.training: return
            _sync(dev); times.append(time.perf_counter())
            if len(times) >= n: raise CancelFitException()
    return _Stop()


def _per_step(times, warm):
    "Seconds per step from the times after each batch, leaving out the first `warm` batches."
    if len(times) < warm + 2: raise RuntimeError(f'only {len(times)} steps ran')
    return (times[-1] - times[warm - 1]) / (len(times) - warm) if warm else (times[-1] - times[0]) / (len(times) - 1)


def section_learner(S, dev, rows):
    from fastai.data.core import DataLoaders
    from sgre.train import fit_recipe, gpu_precision, sgre_learner
    gpu_precision(dev)
    B, C, prec = S['bs'], S['C'], 'bf16'
    x, y = _batch(S, dev, B, C)
    n = S['warm'] + S['max_steps']
    dls = DataLoaders(_SameBatch((x, y), n), _SameBatch((x, y), 1), device=dev)
    dls.c = C
    torch.manual_seed(0)
    learn = sgre_learner(dls, S['arch'], torch.randn(C, S['T']), lr=1e-5, amp=prec, bars=False, pretrained=False,
                         attn_dim=S['A'], ff_dim=S['ff'], num_heads=S['heads'], **S['bb'])
    model, loss_fn = learn.model, _loss_fn()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    bare = []
    def run_bare(case):
        model.train()
        r = _timed(_bare_step(model, opt, loss_fn, x, y, prec, dev), S, dev)
        bare.append(r['s'])
        rows.add(case, **{'step': f"{r['s'] * 1e3:.1f} ms", 'images/s': f"{B / r['s']:.1f}", 'steps timed': r['n'], 'peak memory': r['peak']})
    run_bare(f'bare model step ({prec}, batch {B}, C={C})')
    opt.zero_grad(set_to_none=True)
    times = []
    with learn.no_logging(): fit_recipe(learn, 1, lr=1e-5, cbs=_stopper(n, times, dev))
    s = _per_step(times, S['warm'])
    rows.add(f'sgre_learner step ({prec}, batch {B}, C={C}: EMA, callbacks, recorder)',
             **{'step': f'{s * 1e3:.1f} ms', 'images/s': f'{B / s:.1f}', 'steps timed': len(times) - S['warm']})
    run_bare(f'bare model step again')
    ratio = s / (sum(bare) / len(bare))
    rows.verdict(f'the fastai Learner step takes {ratio:.2f}x the bare model step ({prec}, batch {B}): '
                 f'{(ratio - 1) * 100:+.0f}% for EMA, callbacks and recorder')


# ------------------------------------------------------------------------------------------------- 4. loader
def _jpeg(rng, w=640, h=480):
    "A photo-like JPEG source: a smooth colour field plus fine noise (decoding costs what a photo costs)."
    import numpy as np
    from PIL import Image
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(coarse, np.float32) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg_set(S, root: Path) -> Path:
    "A prepared dataset of synthetic 640x480 JPEGs (unique images, each under several names), made once per run."
    import numpy as np
    from sgre.data import prepare_csv
    d = root / 'jpegs'
    if (d / 'prepared' / 'label.txt').is_file(): return d / 'prepared'
    (d / 'images').mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ['fname,labels']
    for i in range(S['loader_unique']):
        first = d / 'images' / f'{i:05d}_0.jpg'
        _jpeg(rng).save(first, quality=90)
        for r in range(1, S['loader_repeat']):   # more names for the same bytes: enough batches, little time spent writing
            os.link(first, d / 'images' / f'{i:05d}_{r}.jpg')
    for r in range(S['loader_repeat']):
        for i in range(S['loader_unique']):
            labels = ' '.join(f'c{k}' for k in rng.choice(20, rng.integers(1, 4), replace=False))
            lines.append(f'{i:05d}_{r}.jpg,{labels}')
    (d / 'data.csv').write_text('\n'.join(lines) + '\n')
    return prepare_csv(d / 'data.csv', d / 'images', d / 'prepared', valid_pct=0.1)


def section_loader(S, dev, rows, scratch):
    from sgre.data import default_workers
    from sgre.experiment import parse_config, train
    prepared = _jpeg_set(S, scratch)
    B, warm, steps = S['loader_bs'], S['loader_warm'], S['loader_steps']
    workers = default_workers()
    cfg, _ = parse_config(['--data', 'synthetic', '--data-dir', str(prepared), '--arch', S['arch'], '--no-pretrained',
                           '--img-size', str(S['loader_img']), '--batch-size', str(B), '--embed-type', 'random',
                           '--amp', 'bf16', '--max-epochs', '1', '--exp-root', str(scratch / 'loader_runs'),
                           '--attn-dim', str(S['A']), '--num-heads', str(S['heads']),
                           *(['--output-stride', str(S['bb']['output_stride'])] if S['bb'] else [])])
    times, box = [], []
    train(cfg, cbs=_stopper(warm + steps, times, dev, box))
    s = _per_step(times, warm)
    run_ips = B / s
    w_txt = f"{workers} worker{'s' if workers != 1 else ''}"
    rows.add(f"train() --amp bf16, default workers, {S['loader_img']} px, batch {B}",
             **{'images/s': f'{run_ips:.1f}', 'steps timed': len(times) - warm, 'workers': workers,
                'pipeline': 'decode 640x480, squish, flip, Cutout, RandAugment, normalise on the device'})
    learn = box[0]
    n, it = 0, iter(learn.dls.train)            # the loader alone: the same (persistent) workers
    next(it); _sync(dev)
    t0 = time.perf_counter()
    for xb, yb in it:
        n += len(xb)
        if n >= steps * B: break
    _sync(dev)
    load_ips = n / (time.perf_counter() - t0)
    del it
    rows.add('the loader alone (same loaders)', **{'images/s': f'{load_ips:.1f}', 'images timed': n, 'workers': workers})
    model, loss_fn = learn.model.train(), _loss_fn()
    x, y = _batch(dict(S, img=S['loader_img']), dev, B, learn.dls.c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    r = _timed(_bare_step(model, opt, loss_fn, x, y, 'bf16', dev), S, dev)
    model_ips = B / r['s']
    rows.add(f'the model step alone (bf16, batch {B})', **{'images/s': f'{model_ips:.1f}', 'steps timed': r['n']})
    keeps = load_ips >= model_ips
    rows.verdict(f"data {'keeps up' if keeps else 'does NOT keep up'}: the loader alone gives {load_ips:.0f} img/s with "
                 f'{w_txt} against {model_ips:.0f} for the model step alone; train() runs at {run_ips:.0f} img/s, '
                 f'{run_ips / model_ips:.0%} of the model step', 'ok' if keeps else 'CHECK')


# ---------------------------------------------------------------------------------------------- 5. resume
def _digits(S, root: Path) -> Path:
    from sgre.data import prepare_digits
    d = root / 'digits'
    if not (d / 'label.txt').is_file():
        prepare_digits(d, n_train=S['digits_train'], n_test=S['digits_test'], size=max(32, S['tiny_img']), seed=0)
    return d


def _tiny_args(S, digits, root, *extra):
    return ['--data', 'digits', '--data-dir', str(digits), '--arch', 'resnet10t', '--no-pretrained',
            '--img-size', str(S['tiny_img']), '--output-stride', '8', '--batch-size', str(S['tiny_bs']),
            '--embed-type', 'random', '--attn-dim', '32', '--num-heads', '2', '--num-workers', '0', '--no-flip',
            '--lr', '2e-3', '--ema-decay', '0.9', '--pos', '--exp-root', str(root), *extra]


def section_resume(S, dev, rows, scratch):
    from fastai.callback.core import Callback
    from fastai.learner import CancelFitException
    from sgre.experiment import parse_config, resume, train
    digits = _digits(S, scratch)

    class _AfterFirstEpoch(Callback):
        def before_epoch(self):
            if self.epoch == 1: raise CancelFitException()

    class _MoveAtFit(Callback):
        "On the CPU, the stand-in for fastai's move to the GPU when the fit starts: the model becomes float64."
        order = 1   # right after TrainEvalCallback, which moves the model to the loader's device
        def before_fit(self): self.learn.model.double()
        def before_batch(self): self.learn.xb = tuple(x.double() for x in self.xb)

    class _CheckFirstStep(Callback):
        order = 99
        def after_step(self):
            opt = self.opt.opt
            ps = [p for g in opt.param_groups for p in g['params']]
            states = [(p, v) for p in ps for v in opt.state[p].values() if torch.is_tensor(v) and v.ndim]
            self.res = dict(n=len(states), on=sorted({f'{p.device} {str(p.dtype)[6:]}' for p in ps}),
                            bad=[(tuple(p.shape), v.dtype, v.device, p.dtype, p.device) for p, v in states
                                 if (v.dtype, v.device) != (p.dtype, p.device)])
            raise CancelFitException()

    cfg, _ = parse_config(_tiny_args(S, digits, scratch / 'resume_runs', '--max-epochs', '2'))
    exp = train(cfg, cbs=_AfterFirstEpoch())
    saved = torch.load(exp / 'checkpoints' / 'last.pth', weights_only=True)['epoch']
    check = _CheckFirstStep()
    resume(exp, cbs=[check] + ([_MoveAtFit()] if dev.type == 'cpu' else []))
    r, case = getattr(check, 'res', None), 'one epoch, then resume and one step'
    if r is None:
        rows.add(case, 'FAILED', why='the resumed run made no optimizer step')
        rows.verdict('the resumed run made no optimizer step', 'FAILED'); return
    want = f'cuda:{torch.cuda.current_device()} float32' if dev.type == 'cuda' else 'cpu float64'
    ok = r['n'] > 0 and not r['bad'] and saved == 0 and r['on'] == [want]
    rows.add(case, 'ok' if ok else 'FAILED', **{'saved epoch': saved + 1, 'parameters': '/'.join(r['on']),
             'optimizer state tensors': r['n'], 'on another device or dtype': len(r['bad'])},
             **({'first': str(r['bad'][0])} if r['bad'] else {}))
    stand_in = ' (on the CPU, float64 stands in for the move to the GPU)' if dev.type == 'cpu' else ''
    rows.verdict(f"after --resume every optimizer state tensor ({r['n']}) is on its parameter's device and dtype, {r['on'][0]}{stand_in}"
                 if ok else f"{len(r['bad'])} of {r['n']} optimizer state tensors are not on their parameter's device and dtype after "
                 f"--resume{stand_in}", 'ok' if ok else 'FAILED')


# ---------------------------------------------------------------------------------------------- 6. accum
def section_accum(S, dev, rows, scratch):
    from fastai.callback.core import Callback
    from fastai.learner import CancelFitException
    from sgre.experiment import build_learner, parse_config
    from sgre.train import fit_recipe
    digits = _digits(S, scratch)
    A = S['accum']
    init, got = None, {}

    class _Deterministic(Callback):
        "BatchNorm on its running statistics, dropout off (after TrainEvalCallback put the model in training mode)."
        order = 1
        def before_batch(self): self.learn.model.eval()

    class _Capture(Callback):
        "The gradient before each optimizer step and the learning rate; stops after `steps` optimizer steps."
        order = 95   # GradAccum (9) stops the micro-batches before the last before this runs
        def __init__(self, steps): self.n_steps, self.n_done = steps, 0   # names the Learner does not have
        def before_step(self):
            self.last_grad = torch.cat([p.grad.detach().flatten().double() for p in self.learn.model.parameters() if p.grad is not None])
        def after_step(self):
            self.step_lr, self.n_done = self.opt.hypers[0]['lr'], self.n_done + 1
            if self.n_done == self.n_steps: raise CancelFitException()

    for name, extra in (('one', []), ('accum', ['--accum-steps', '2'])):
        cfg, _ = parse_config(_tiny_args(S, digits, scratch / 'accum_runs', '--arch', A['arch'], '--img-size', str(A['img']),
                                         '--batch-size', str(A['bs']), '--strict-fp32', '--max-epochs', '1', *A['extra'], *extra))
        learn = build_learner(cfg, device=dev)
        if init is None: init = {k: v.detach().clone() for k, v in learn.model.state_dict().items()}
        else: learn.model.load_state_dict(init)
        # two optimizer steps: timm's ResNets start each residual branch's last BatchNorm at zero, so with BatchNorm frozen
        # the first step's gradient inside the branches is zero; the second one's is not
        cap = _Capture(2)
        with learn.no_logging(): fit_recipe(learn, 1, lr=cfg['lr'], cbs=[_Deterministic(), cap])
        got[name] = dict(grad=cap.last_grad, lr=cap.step_lr, w=learn.model.state_dict(), ema=learn.ema.ema_model.state_dict(),
                         micro=learn.dls.train.bs, steps=learn.grad_accum.opt_steps)
        del learn
        _free(dev)
    one, acc = got['one'], got['accum']
    g_rel = ((acc['grad'] - one['grad']).norm() / one['grad'].norm()).item()
    fl = [k for k, v in one['w'].items() if v.is_floating_point()]
    diff = {k: (acc['w'][k] - one['w'][k]).abs().max().item() for k in fl}
    worst = max(diff, key=diff.get)
    moved = max((one['w'][k] - init[k]).abs().max().item() for k in fl)
    e_abs = max((acc['ema'][k] - one['ema'][k]).abs().max().item() for k in one['ema'] if one['ema'][k].is_floating_point())
    same_lr = acc['lr'] == one['lr']
    ok = g_rel < 1e-5 and same_lr and moved > 0 and (acc['steps'], one['steps']) == (2, 2)
    rows.add(f"--accum-steps 2 ({acc['micro']} + {acc['micro']}) vs batches of {one['micro']}, 2 steps", 'ok' if ok else 'CHECK',
             **{'gradient rel diff': f'{g_rel:.1e}', 'same lr': same_lr, 'optimizer steps': f"{acc['steps']} / {one['steps']}",
                'weights max abs diff': f'{diff[worst]:.1e} ({worst})', 'largest weight change': f'{moved:.1e}',
                'EMA max abs diff': f'{e_abs:.1e}'})
    rows.verdict(f"--accum-steps 2 {'matches' if ok else 'does NOT match'} steps of twice the batch: the second step's gradients agree to "
                 f"{g_rel:.1e} (relative), same learning rate: {same_lr}; after two AdamW steps the weights differ by at most {diff[worst]:.1e} "
                 f"({worst}; AdamW divides by the gradient's size, so a gradient of rounding noise still takes a full step)",
                 'ok' if ok else 'CHECK')


# ---------------------------------------------------------------------------------------------- 7. compile
def section_compile(S, dev, rows):
    from torch._dynamo.utils import counters
    from sgre.train import gpu_precision
    gpu_precision(dev)
    B, C, prec, backend = S['bs'], S['C'], 'bf16', S['compile_backend']
    model = _model(S, 'auto', dev).train()
    x, y = _batch(S, dev, B, C)
    loss_fn, opt = _loss_fn(), torch.optim.AdamW(model.parameters(), lr=1e-5)
    eager = _timed(_bare_step(model, opt, loss_fn, x, y, prec, dev), S, dev)
    rows.add(f'eager ({prec}, batch {B}, C={C})', **{'images/s': f"{B / eager['s']:.1f}", 'steps timed': eager['n'], 'peak memory': eager['peak']})
    torch._dynamo.reset(); counters.clear()
    model.compile(backend=backend)    # what --compile does (`sgre_learner(compile=True)`), with this backend
    step = _bare_step(model, opt, loss_fn, x, y, prec, dev)
    t0 = time.perf_counter()
    step(); _sync(dev)
    first = time.perf_counter() - t0
    breaks = sum(counters['graph_break'].values())
    graphs = counters['stats']['unique_graphs']
    reasons = '; '.join(list(counters['graph_break'])[:3]).replace('\n', ' ')[:200]
    rows.add(f'torch.compile ({backend}): graphs', 'ok' if breaks == 0 else 'CHECK',
             **{'graphs': graphs, 'graph breaks': breaks, 'first step (compilation)': f'{first:.0f} s'}, **({'reasons': reasons} if reasons else {}))
    r = _timed(step, S, dev, warm=max(1, S['warm'] - 1))
    speed = eager['s'] / r['s']
    rows.add(f'torch.compile ({backend}): speed', **{'images/s': f"{B / r['s']:.1f}", 'vs eager': f'{speed:.2f}x',
                                                     'steps timed': r['n'], 'peak memory': r['peak']})
    rows.verdict(f'{breaks} graph breaks ({graphs} graph{"s" if graphs != 1 else ""}) in the training step; compiled ({backend}) it runs '
                 f'{speed:.2f}x eager after {first:.0f} s of compilation', 'ok' if breaks == 0 else 'CHECK')


# ---------------------------------------------------------------------------------------------------- 8. ddp
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
    timeout = max(5., rows.left())
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / 'child.json'
        cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', '1', '--num_machines', '1',
               '--mixed_precision', 'no', '--dynamo_backend', 'no', *(['--cpu'] if smoke else []),
               str(HERE), '--ddp-child', '--json-out', str(out), *(['--cpu-smoke'] if smoke else [])]
        env = dict(os.environ, PYTHONUNBUFFERED='1', HF_HUB_OFFLINE='1',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(_free_port()), RANK='0', WORLD_SIZE='1', LOCAL_RANK='0')
        try:
            res = run_group(cmd, timeout, cwd=d, env=env)
        except subprocess.TimeoutExpired:
            rows.add(case, 'FAILED', why=f'timed out after {timeout:.0f} s'); rows.verdict('the launch timed out', 'FAILED'); return
        if res.returncode != 0 or not out.exists():
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            rows.add(case, 'FAILED', why=f'exit {res.returncode}: ' + ' / '.join(tail).replace('|', '/')[:300])
            rows.verdict('the launch failed', 'FAILED'); return
        v = json.loads(out.read_text())
        ok = v['ran'] == S['ddp_steps'] and (smoke or v['sync_bn'] > 0) and v['wrapped_ddp']
        rows.add(case, 'ok' if ok else 'CHECK', **{'steps/s': f"{v['steps_per_s']:.2f}", 'backend': v['backend'], 'world size': v['world'],
                                                   'SyncBatchNorm layers': v['sync_bn'], 'BatchNorm layers left': v['plain_bn'],
                                                   'model in DDP': v['wrapped_ddp']})
        rows.verdict(f"{v['backend']} group of {v['world']}: the Learner trained {v['ran']} steps "
                     f"{'wrapped in DDP' if v['wrapped_ddp'] else 'NOT wrapped in DDP'}, with {v['sync_bn']} SyncBatchNorm layers, "
                     f"{v['steps_per_s']:.2f} steps/s", 'ok' if ok else 'CHECK')


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
    if smoke: torch.set_num_threads(1)
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


# ---------------------------------------------------------------------------------------------- the driver
def run_section(name, smoke, out_path, timeout, scratch):
    S = sizes(smoke)
    dev = torch.device('cpu' if smoke else 'cuda')
    rows = Rows(out_path, time.monotonic() + timeout)
    if smoke: torch.set_num_threads(1)   # one thread: on a busy machine, more spin and cost CPU time for nothing
    scratch = Path(scratch)
    try:
        if name == 'precision': section_precision(S, dev, rows)
        elif name == 'head': section_head(S, dev, rows)
        elif name == 'learner': section_learner(S, dev, rows)
        elif name == 'loader': section_loader(S, dev, rows, scratch)
        elif name == 'resume': section_resume(S, dev, rows, scratch)
        elif name == 'accum': section_accum(S, dev, rows, scratch)
        elif name == 'compile': section_compile(S, dev, rows)
        elif name == 'ddp': section_ddp(S, dev, rows, smoke)
    except Exception as ex:
        rows.failed('(section)', ex)
        if rows._verdict is None or rows._verdict['status'] == 'ok':
            rows.verdict(f'stopped by {type(ex).__name__}' + (f"; so far: {rows._verdict['result']}" if rows._verdict else ''), 'FAILED')


def expected_rows(name, smoke) -> int:
    "Rows a finished section writes, its verdict left out."
    S = sizes(smoke)
    return dict(precision=9, head=len(IMPLS) * len(PRECISIONS) * len(S['head_C']), learner=3, loader=3, resume=1, accum=1,
                compile=3, ddp=1)[name]


def card(smoke) -> tuple:
    "The device and the versions: (title, details)."
    try:
        import sgre
        version = sgre.__version__
    except Exception as e: version = f'not importable ({type(e).__name__})'
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    try:
        if smoke: dev, flags = f'CPU smoke run (no GPU; tiny sizes), {cores} cores', 'CPU'
        else:
            p = torch.cuda.get_device_properties(0)
            dev = (f'{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, '
                   f'{p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}), {cores} CPU cores')
            flags = (f'cuDNN {torch.backends.cudnn.version()}; PyTorch defaults: cuDNN TF32 {torch.backends.cudnn.allow_tf32}, '
                     f'matmul TF32 {torch.backends.cuda.matmul.allow_tf32}; training sections: sgre.train.gpu_precision '
                     f"(TF32 matmul and convolutions, cuDNN benchmark)")
    except Exception as e: dev, flags = f'(device query failed: {type(e).__name__}: {e})', ''
    return dev, f'torch {torch.__version__}, CUDA {torch.version.cuda or "none"}, {flags}, sgre {version}'


def _run_one(name, a, cap, scratch) -> list:
    "One section in its own process under `cap` seconds: its rows, a FAILED row for what it did not finish, its verdict."
    with tempfile.TemporaryDirectory() as d:
        jf = Path(d) / 'rows.json'
        cmd = [sys.executable, str(HERE), '--section', name, '--json-out', str(jf), '--timeout', str(cap - 5),
               '--scratch', str(scratch), *(['--cpu-smoke'] if a.cpu_smoke else [])]
        env = dict(os.environ, HF_HUB_OFFLINE='1', **({'OMP_NUM_THREADS': '1'} if a.cpu_smoke else {}))
        err = None
        try:
            res = run_group(cmd, cap, env=env)
            if res.returncode != 0:
                tail = (res.stderr or res.stdout).strip().splitlines()[-2:]
                err = f'exit {res.returncode}: ' + ' / '.join(tail)
        except subprocess.TimeoutExpired:
            err = f'timed out after {cap:.0f} s'
        rows = json.loads(jf.read_text()) if jf.exists() else []   # written whole (Rows._write)
    verdict = [r for r in rows if r['case'] == 'verdict']
    rows = [r for r in rows if r['case'] != 'verdict']
    if err and len(rows) < expected_rows(name, a.cpu_smoke):
        rows.append(dict(case='(rest of section)', status='FAILED', result='why ' + err.replace('|', '/')[:300]))
    if not verdict: verdict = [dict(case='verdict', status='FAILED', result=f'no verdict: {err or "the section wrote none"}')]
    elif err: verdict[0] = dict(verdict[0], status='PARTIAL', result=f"{verdict[0]['result']} (then: {err[:100]})")
    return rows + verdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='gpu_check.csv', help='the CSV file to write (default: gpu_check.csv here)')
    ap.add_argument('--budget', type=float, default=None, help=f'seconds for the whole run (default {BUDGET:.0f}; smoke {SMOKE_BUDGET:.0f})')
    ap.add_argument('--cpu-smoke', action='store_true', help='every section on the CPU at tiny sizes')
    ap.add_argument('--only', nargs='*', choices=SECTIONS, help='run only these sections')
    ap.add_argument('--section', choices=SECTIONS, help=argparse.SUPPRESS)
    ap.add_argument('--ddp-child', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--json-out', help=argparse.SUPPRESS)
    ap.add_argument('--timeout', type=float, default=60., help=argparse.SUPPRESS)
    ap.add_argument('--scratch', help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.ddp_child: return ddp_child(sizes(a.cpu_smoke), a.json_out, a.cpu_smoke)
    if a.section: return run_section(a.section, a.cpu_smoke, a.json_out, a.timeout, a.scratch or tempfile.mkdtemp())
    from sgre.core import atomic_write, sgre_error
    if a.budget is not None and not (a.budget > 0 and math.isfinite(a.budget)):
        raise sgre_error(f'--budget {a.budget:g} is out of range; it must be a number of seconds above 0 (default {BUDGET:.0f}).')
    if not a.cpu_smoke and not torch.cuda.is_available():
        print(f'No CUDA GPU here (torch {torch.__version__}): nothing to check. '
              f'Run it on a GPU machine, or with --cpu-smoke to try the code paths on the CPU.')
        return 0
    budget = a.budget or (SMOKE_BUDGET if a.cpu_smoke else BUDGET)
    caps = SMOKE_CAPS if a.cpu_smoke else CAPS
    start, results = time.monotonic(), []
    with tempfile.TemporaryDirectory() as scratch:   # data sets the sections share (synthetic JPEGs, digits)
        for name in a.only or SECTIONS:
            cap = min(caps[name], budget - (time.monotonic() - start))
            if cap < 10:
                results += [dict(section=name, case='(section)', status='FAILED', result='why not run: the time budget is spent'),
                            dict(section=name, case='verdict', status='FAILED', result='not run: the time budget is spent')]
                continue
            t0 = time.monotonic()
            results += [dict(section=name, **r) for r in _run_one(name, a, cap, Path(scratch))]
            print(f'[{name}: {time.monotonic() - t0:.0f} s]', file=sys.stderr, flush=True)
    dev, details = card(a.cpu_smoke)
    table = [f'## sgre GPU check: {dev}\n\n{details}\n', '| section | case | status | result |', '|---|---|---|---|']
    table += [f"| {r['section']} | {r['case']} | {r['status']} | {r['result']} |" for r in results if r['case'] != 'verdict']
    table.append('\nVerdicts:\n')
    table += [f"- {r['section']}: {r['status'] + ': ' if r['status'] != 'ok' else ''}{r['result']}" for r in results if r['case'] == 'verdict']
    table.append(f'\n{time.monotonic() - start:.0f} s in all.')
    print('\n'.join(table))
    with atomic_write(a.out) as tmp, open(tmp, 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, fieldnames=['section', 'case', 'status', 'result'])
        w.writeheader()
        w.writerow(dict(section='card', case=dev, status='', result=details))
        w.writerows(results)
    print(f'(saved as {a.out})')
    return 0


if __name__ == '__main__':
    if '--section' in sys.argv or '--ddp-child' in sys.argv: sys.exit(main())
    from sgre.core import run_cli
    sys.exit(run_cli(main, prog='gpu_check.py'))
