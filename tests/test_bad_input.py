"""Bad input for every console script, run as a user runs it (a subprocess each).

Every case must end with a non-zero exit status and one paragraph on stderr, `prog: error: ...`, that names the
problem and says the fix, with no traceback (unless `--debug`), and must leave the folders it could write to exactly
as they were: an existing good result (a prepared dataset, an experiment, embeddings) survives byte for byte and no
temporary or half-written file is left. A run interrupted with Ctrl-C during training leaves a state that
`sgre_train --resume` completes.

The cases are built in fresh folders, run two at a time (each process spends ~2-6 s importing torch and fastai) by one
module fixture, and then checked by the tests below, one test per property and case. The same cases, with their
messages, are listed on the docs page of the command line (nbs/15_cli.ipynb).
"""
import hashlib, os, re, shutil, signal, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import honouring_permissions
import torch
from PIL import Image

from sgre.data import prepare_digits, prepare_voc2007
from sgre.model import SGRE
from sgre.experiment import model_options, parse_config, write_config

FIX = Path(__file__).parent / 'fixtures'
BIN = Path(sys.executable).parent
# one thread per process: the cases run two at a time on small inputs
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
# the tiny training configuration: a few seconds per epoch on a CPU
TINY = ['--data', 'digits', '--arch', 'resnet10t', '--no-pretrained', '--img-size', '32', '--output-stride', '8',
        '--batch-size', '16', '--max-epochs', '1', '--embed-type', 'random', '--attn-dim', '32', '--num-heads', '2',
        '--num-workers', '0', '--no-flip', '--lr', '1e-3']


def exe(prog: str) -> str:
    return str(BIN / prog) if (BIN / prog).exists() else shutil.which(prog) or prog


# ---------------------------------------------------------------------------------------------------------------
# helpers

_MD5 = {}

def _md5(p: Path) -> str:
    "A file's MD5, remembered per inode and modification time (the cases share hard-linked checkpoints)."
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _MD5: _MD5[key] = hashlib.md5(p.read_bytes()).hexdigest()
    return _MD5[key]


def listing(*folders) -> dict:
    "Every file (with its MD5) and folder under `folders`: what a command must leave as it found it."
    out = {}
    for f in map(Path, folders):
        if not f.exists(): out[str(f)] = None; continue
        for p in [f, *sorted(f.rglob('*'))]:
            out[str(p)] = 'dir' if p.is_dir() else _md5(p)
    return out


_WARNING = re.compile(r'^\S.*:\d+: \w*Warning: ')

def error_lines(stderr: str) -> list:
    "The lines of stderr, without Python warnings (`file:line: XWarning: text` and the source line under it)."
    out, skip = [], False
    for line in stderr.splitlines():
        if _WARNING.match(line): skip = True; continue
        if skip and line.startswith('  '): skip = False; continue
        skip = False
        if line.strip(): out.append(line)
    return out


def _link_checkpoints(src, dst):
    "copytree's copy function: hard-link the (large) .pth files, copy the rest (commands append to some files in place)."
    if str(src).endswith('.pth'): os.link(src, dst)
    else: shutil.copy2(src, dst)


def put(path: Path, data):
    "Replace a file's content (unlinking first: the file may be a hard link shared with the fixture's originals)."
    path = Path(path)
    if path.exists(): path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def set_writable(folders, writable: bool):
    "chmod the folders (not the files: they may be hard links to the fixture's originals) under `folders`."
    for f in folders:
        for p in [Path(f), *Path(f).rglob('*')]:
            if p.is_dir(): p.chmod(0o755 if writable else 0o555)


# ---------------------------------------------------------------------------------------------------------------
# the shared good inputs, built once

class World:
    "A prepared digits set, a prepared VOC set, and an experiment folder on it: the good inputs every case starts from."
    def __init__(self, root: Path):
        self.root = root
        self.data = prepare_digits(root / 'digits', n_train=64, n_test=32, size=32)
        self.voc = prepare_voc2007(FIX / 'voc2007' / 'raw', root / 'voc')
        self.labels = (self.data / 'label.txt').read_text().split()
        # an experiment as `sgre_train` writes it (its config, best EMA weights), without spending time on training
        cfg, _ = parse_config(TINY + ['--data-dir', str(self.data), '--exp-root', str(root / 'runs')])
        self.cfg = cfg
        self.exp = root / 'runs' / 'mlic_digits' / 'exp1'
        (self.exp / 'checkpoints').mkdir(parents=True)
        write_config(dict(cfg, num_classes=len(self.labels), labels=self.labels, world_size=1), self.exp / 'config.yaml')
        (self.exp / 'train.log').write_text('epoch 1/1 ...\n')
        torch.save(self.model(len(self.labels)).state_dict(), self.exp / 'checkpoints' / 'best_ema_model.pth')
        (root / 'runs' / 'mlic_digits' / 'checkpoint.txt').write_text('exp1\tsgre_train ...\n')
        self.five = root / 'five_classes.pth'   # a checkpoint of the same model for 5 classes
        torch.save(self.model(5).state_dict(), self.five)
        self.prefix = self._permission_prefix()

    def model(self, n: int) -> SGRE:
        torch.manual_seed(0)
        return SGRE(self.cfg['arch'], n, embeddings=None, **model_options(self.cfg, pretrained=False))

    def _permission_prefix(self):
        probe = self.root / 'probe'
        probe.mkdir(); probe.chmod(0o555)
        try: return honouring_permissions(probe)
        finally: probe.chmod(0o755)

    # copies a case may change
    def copy_data(self, d: Path) -> Path:
        return Path(shutil.copytree(self.data, d / 'data'))

    def copy_exp(self, d: Path, data: Path | None = None) -> Path:
        "A copy of the experiment (its checkpoints hard-linked: they are large), reading `data` if given."
        exp = Path(shutil.copytree(self.exp, d / 'exp', copy_function=_link_checkpoints))
        if data is not None: put(exp / 'config.yaml', (exp / 'config.yaml').read_text().replace(str(self.data), str(data)))
        return exp

    def exp_root(self, d: Path) -> Path:
        "An experiments folder that already holds a run: a failed `sgre_train` must leave it as it is."
        shutil.copytree(self.root / 'runs', d / 'runs', copy_function=_link_checkpoints)
        return d / 'runs'

    def copy_raw(self, d: Path, name: str) -> Path:
        return Path(shutil.copytree(FIX / name / 'raw', d / f'{name}-raw'))

    def copy_voc(self, d: Path) -> Path:
        return Path(shutil.copytree(self.voc, d / 'out' / 'voc'))


@dataclass
class Case:
    id: str                       # `<command>: <what is wrong>`
    prog: str
    build: Callable               # (world, folder) -> dict(argv=[...], watch=[folders], read_only=[folders])
    says: tuple                   # what the message must name (the problem)
    fix: tuple                    # ... and how it tells the user to fix it
    status: int = 2               # the exit status (2: bad input; 1: the environment, e.g. a full disk)
    # filled in by the runner
    argv: list = field(default_factory=list)
    watch: list = field(default_factory=list)
    res: subprocess.CompletedProcess | None = None
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    skipped: str = ''


def _voc_edit(rel, text):
    def build(w, d):
        raw, dest = w.copy_raw(d, 'voc2007'), w.copy_voc(d)
        put(raw / rel, text)
        return dict(argv=['--data', 'voc2007', '--root', raw, '--dest', dest], watch=[dest.parent])
    return build

def _coco_edit(rel, text):
    def build(w, d):
        raw, dest = w.copy_raw(d, 'mscoco'), w.copy_voc(d)
        if text is None: (raw / rel).unlink()
        else: put(raw / rel, text)
        return dict(argv=['--data', 'mscoco', '--root', raw, '--dest', dest], watch=[dest.parent])
    return build

def _prepare_read_only(w, d):
    dest = w.copy_voc(d)
    return dict(argv=['--data', 'digits', '--n-train', '5', '--n-test', '5', '--dest', dest], watch=[dest.parent],
                read_only=[dest.parent])

def _prepare_dest_is_file(w, d):
    put(d / 'out' / 'voc', 'a file, not a folder\n')
    return dict(argv=['--data', 'digits', '--n-train', '5', '--n-test', '5', '--dest', d / 'out' / 'voc'], watch=[d / 'out'])


def _embed(edit, *extra):
    def build(w, d):
        data = d / 'data'
        put(data / 'label.txt', 'cat\ntraffic light\n')
        put(data / 'glove.npy', b'an existing result that must survive')
        put(d / 'glove.txt', 'cat 1 0 0\ntraffic 0 1 0\nlight 0 0 1\n')
        edit(data, d)
        return dict(argv=['--data', data, *[a(d) if callable(a) else a for a in extra]], watch=[data])
    return build

def _embed_read_only(w, d):
    b = _embed(lambda data, d: None, '--kind', 'glove', '--glove', lambda d: d / 'glove.txt')(w, d)
    return dict(b, read_only=b['watch'])


def _train(edit=None, *extra):
    "sgre_train (tiny configuration) on a copy of the digits set changed by `edit(data)`, into an existing exp-root."
    def build(w, d):
        data = w.copy_data(d)
        if edit: edit(data)
        runs = w.exp_root(d)
        more = [a(d) if callable(a) else a for a in extra]
        return dict(argv=[*TINY, '--data-dir', data, '--exp-root', runs, *more], watch=[runs, data])
    return build

def _train_read_only(w, d):
    b = _train()(w, d)
    return dict(b, read_only=[b['watch'][0]])

def _truncated_jpeg(data):
    "Train image 5 as a JPEG cut in half, listed in train.txt."
    im = Image.open(data / 'images' / 'train' / '00005.png').convert('RGB')
    im.save(data / 'images' / 'train' / '00005.jpg', quality=95)
    b = (data / 'images' / 'train' / '00005.jpg').read_bytes()
    put(data / 'images' / 'train' / '00005.jpg', b[:len(b) // 2])
    put(data / 'train.txt', (data / 'train.txt').read_text().replace('images/train/00005.png', 'images/train/00005.jpg'))

def _resume(edit):
    def build(w, d):
        exp = w.copy_exp(d)
        edit(exp, d)
        return dict(argv=['--resume', exp], watch=[exp, w.data])
    return build


def _on_exp(edit=None, *extra, data_edit=None):
    "sgre_evaluate / sgre_infer on a copy of the experiment changed by `edit(exp, d)`; `extra(w, d)` adds options."
    def build(w, d):
        data = None
        if data_edit:
            data = w.copy_data(d); data_edit(data)
        exp = w.copy_exp(d, data)
        if edit: edit(exp, d)
        more = []
        for a in extra:
            a = a(w, d) if callable(a) else a
            more += a if isinstance(a, list) else [a]
        return dict(argv=['--exp-dir', exp, *more], watch=[exp, data or w.data])
    return build

def _exp_read_only(w, d):
    b = _on_exp(None, '--num', '1')(w, d)
    return dict(b, read_only=[b['watch'][0]])

def _eval_read_only(w, d):
    b = _on_exp()(w, d)
    return dict(b, read_only=[b['watch'][0]])

def _not_an_experiment(w, d):
    (d / 'notes').mkdir()
    put(d / 'notes' / 'readme.txt', 'not an experiment\n')
    return dict(argv=['--exp-dir', d / 'notes'], watch=[d / 'notes'])


def _bad_png(data, split='test', k='00003'):
    put(data / 'images' / split / f'{k}.png', 'this is not an image\n')

def _trunc_png(data, split='test', k='00004'):
    p = data / 'images' / split / f'{k}.png'
    put(p, p.read_bytes()[:70])

NOT_UTF8 = b'\xff\xfe\x00arch: resnet10t\n'

class _Payload:
    "An object whose unpickling runs a command (here: writes a file into the experiment folder, which the case watches)."
    def __init__(self, target): self.target = str(target)
    def __reduce__(self): return (os.system, (f'touch {self.target}',))

def _hostile_state(exp, d):
    torch.save({'epoch': 0, 'note': _Payload(exp / 'pwned')}, exp / 'checkpoints' / 'last.pth')

def _plain_state(exp):
    "A resume state of the right shape (its content is not used before the check that fails)."
    torch.save(dict(format='sgre-resume', version=1, epoch=0, n_epoch=2, model={}, ema={}, opt={}, best=0.5, best_epoch=0,
                    wait=0, rng={}), exp / 'checkpoints' / 'last.pth')

def _without_batch_size(exp, d=None):
    put(exp / 'config.yaml', ''.join(l for l in (exp / 'config.yaml').read_text().splitlines(True) if not l.startswith('batch_size:')))

def _damaged_history(exp, d):
    _plain_state(exp)
    put(exp / 'config.yaml', (exp / 'config.yaml').read_text().replace('max_epochs: 1', 'max_epochs: 2'))
    put(exp / 'history.csv', 'epoch,train_loss,valid_loss,mAP,ema_mAP,lr,seconds\n1,0.5,0.4,0.3,,0.001,2\n')

HELD = []   # locks this process holds on experiment folders for the cases' lifetime

def _held(exp, d):
    from sgre.process import RunLock
    HELD.append(RunLock(exp).acquire())
GARBAGE_PTH = b'\x80\x02this is not a checkpoint' * 8


def _infer_images(w, d):
    put(d / 'notes.png', 'a text file named like an image\n')
    return ['--images', w.data / 'images' / 'test' / '00001.png', d / 'notes.png']


CASES = [
    # ---- sgre_prepare: raw data missing, empty or garbled; destinations that cannot be written
    Case('sgre_prepare: a missing annotation file', 'sgre_prepare',
         _coco_edit('annotations/instances_train2014.json', None),
         ('annotations/instances_train2014.json', 'does not exist'), ('annotations_trainval2014.zip',)),
    Case('sgre_prepare: malformed JSON', 'sgre_prepare', _coco_edit('annotations/instances_val2014.json', '{"images": [}'),
         ('annotations/instances_val2014.json line 1 column 13 is not valid JSON',), ('download or unpack it again',)),
    Case('sgre_prepare: malformed XML', 'sgre_prepare', _voc_edit('Annotations/000012.xml', '<annotation><object></annotation>'),
         ('Annotations/000012.xml line 1 column 23 is not well-formed XML',), ('unpack the VOC archives again',)),
    Case('sgre_prepare: an empty list file', 'sgre_prepare', _voc_edit('ImageSets/Main/trainval.txt', ''),
         ('ImageSets/Main/trainval.txt lists no image',), ('VOCtrainval_06-Nov-2007.tar',)),
    Case('sgre_prepare: an unknown label', 'sgre_prepare', _voc_edit(
        'Annotations/000008.xml', '<annotation><object><name>unicorn</name><difficult>0</difficult></object></annotation>'),
         ('the label `unicorn` is not in label.txt',), ('check the class name',)),
    Case('sgre_prepare: a read-only destination', 'sgre_prepare', _prepare_read_only,
         ('is not writable',), ('choose another destination or fix its permissions',)),
    Case('sgre_prepare: a destination that is a file', 'sgre_prepare', _prepare_dest_is_file,
         ('exists and is not a folder',), ('remove it or choose another destination',)),

    # ---- sgre_embed
    Case('sgre_embed: a missing label.txt', 'sgre_embed', _embed(lambda data, d: (data / 'label.txt').unlink()),
         ('label.txt is missing',), ('sgre_prepare --dest',)),
    Case('sgre_embed: an empty label.txt', 'sgre_embed', _embed(lambda data, d: put(data / 'label.txt', '')),
         ('label.txt is empty',), ('one per line',)),
    Case('sgre_embed: a garbled GloVe file', 'sgre_embed',
         _embed(lambda data, d: put(d / 'glove.txt', 'cat one two three\n'), '--kind', 'glove', '--glove', lambda d: d / 'glove.txt'),
         ('does not hold numbers after the word',), ('GloVe text file (one word and its vector per line)',)),
    Case('sgre_embed: a read-only dataset folder', 'sgre_embed', _embed_read_only,
         ('is not writable',), ('fix its permissions',)),

    # ---- sgre_train: the prepared dataset
    Case('sgre_train: a missing label.txt', 'sgre_train', _train(lambda data: (data / 'label.txt').unlink()),
         ('label.txt is missing',), ('sgre_prepare --data digits',)),
    Case('sgre_train: a missing train.txt', 'sgre_train', _train(lambda data: (data / 'train.txt').unlink()),
         ('has no train.txt',), ('sgre_prepare',)),
    Case('sgre_train: an empty list file', 'sgre_train', _train(lambda data: put(data / 'train.txt', '')),
         ('train.txt', 'lists no image'), ('sgre_prepare',)),
    Case('sgre_train: an unknown label in train.txt', 'sgre_train',
         _train(lambda data: put(data / 'train.txt', (data / 'train.txt').read_text().replace('three', 'eleven', 1))),
         ('the label `eleven` is not in label.txt',), ('add it there, or correct the line',)),
    Case('sgre_train: a truncated JPEG', 'sgre_train', _train(_truncated_jpeg),
         ('cannot read the image', 'images/train/00005.jpg', 'image file is truncated'), ('replace the file, or remove its line',)),
    Case('sgre_train: a non-image file among the images', 'sgre_train', _train(lambda data: _bad_png(data, 'train', '00003')),
         ('cannot read the image', 'images/train/00003.png', 'cannot identify image file'), ('replace the file, or remove its line',)),
    # ---- sgre_train: embeddings, options, checkpoints
    Case('sgre_train: embeddings with too few rows', 'sgre_train',
         _train(lambda data: np.save(data / 'glove.npy', np.zeros((7, 5), np.float32)), '--embed-type', 'glove'),
         ('glove.npy has 7 rows', 'label.txt has 10 lines'), ('sgre_embed --data', '--kind glove')),
    Case('sgre_train: a garbled .npy', 'sgre_train',
         _train(lambda data: put(data / 'glove.npy', b'\x93NUMPY garbage'), '--embed-type', 'glove'),
         ('glove.npy is not a readable .npy array',), ('sgre_embed --data', '--kind glove')),
    Case('sgre_train: an unknown --arch', 'sgre_train', _train(None, '--arch', 'resnet_nope'),
         ('unknown backbone `resnet_nope`',), ('timm.list_models()',)),
    Case('sgre_train: an unknown --arch tag', 'sgre_train', _train(None, '--arch', 'resnet10t.nope'),
         ('resnet10t.nope',), ('timm.list_models()',)),
    Case('sgre_train: --batch-size 0', 'sgre_train', _train(None, '--batch-size', '0'),
         ('--batch-size',), ('at least 1',)),
    Case('sgre_train: --num-heads that does not divide the backbone width', 'sgre_train', _train(None, '--num-layers', '1', '--num-heads', '3'),
         ('backbone width 512 into 3 heads', '--num-heads 3'), ('divides 512',)),
    Case('sgre_train: a garbled --pretrained-model checkpoint', 'sgre_train',
         _train(lambda data: put(data.parent / 'garbled.pth', GARBAGE_PTH), '--pretrained-model', lambda d: d / 'garbled.pth'),
         ('garbled.pth is not a readable PyTorch checkpoint',), ('pass the .pth file saved by training',)),
    Case('sgre_train: --resume a folder that is not an experiment', 'sgre_train',
         lambda w, d: _not_an_experiment(w, d) | dict(argv=['--resume', d / 'notes']),
         ('has no config.yaml', 'not an experiment folder'), ('sgre_train',)),
    Case('sgre_train: --resume with a garbled config.yaml', 'sgre_train',
         _resume(lambda exp, d: put(exp / 'config.yaml', 'arch: [resnet10t\nlr: }\n')),
         ('config.yaml is not valid YAML',), ('restore it or start a new run',)),
    Case('sgre_train: --resume an experiment without checkpoint', 'sgre_train', _resume(lambda exp, d: None),
         ('has no checkpoints/last.pth',), ('start it again instead',)),
    Case('sgre_train: --resume with a garbled checkpoint', 'sgre_train',
         _resume(lambda exp, d: put(exp / 'checkpoints' / 'last.pth', GARBAGE_PTH)),
         ('last.pth', 'not a readable'), ('start it again',)),
    Case('sgre_train: a read-only --exp-root', 'sgre_train', _train_read_only,
         ('is not writable',), ('--exp-root',)),
    Case('sgre_train: --resume a state that would run code', 'sgre_train', _resume(_hostile_state),
         ('last.pth is not a resume state sgre wrote', 'posix.system'), ('Start the run again', 'a source you trust')),
    Case('sgre_train: --resume with an option missing from config.yaml', 'sgre_train', _resume(_without_batch_size),
         ('config.yaml lacks the option batch_size',), ('restore the file from a copy',)),
    Case('sgre_train: --resume with a damaged history.csv', 'sgre_train', _resume(_damaged_history),
         ('history.csv line 2: `ema_mAP` is \'\', not a number',), ('restore it, or delete it',)),
    Case('sgre_train: --resume a folder another run is writing', 'sgre_train', _resume(_held),
         ('is in use by another run (process', ), ('Wait for that run to end, or stop it',)),
    Case('sgre_train: --batch-size larger than the training set', 'sgre_train', _train(None, '--batch-size', '65'),
         ('--batch-size 65 is larger than the training set allows: 64 training images',), ('Use --batch-size 64 or less',)),
    Case('sgre_train: --lr inf', 'sgre_train', _train(None, '--lr', 'inf'),
         ('--lr inf is out of range',), ('a finite number above 0',)),
    Case('sgre_train: a learning rate that makes the loss infinite', 'sgre_train', _train(None, '--lr', '1e9'),
         ('the training loss became NaN or infinite at epoch 1, step',), ('try a lower --lr',)),

    # ---- sgre_evaluate
    Case('sgre_evaluate: an exp-dir that does not exist', 'sgre_evaluate', lambda w, d: dict(argv=['--exp-dir', d / 'nowhere'], watch=[d]),
         ('is not a folder',), ('pass the experiment folder of a run',)),
    Case('sgre_evaluate: an exp-dir that is not an experiment', 'sgre_evaluate', _not_an_experiment,
         ('has no config.yaml', 'not an experiment folder'), ('sgre_train',)),
    Case('sgre_evaluate: a garbled config.yaml', 'sgre_evaluate', _on_exp(lambda exp, d: put(exp / 'config.yaml', 'arch: [resnet10t\n')),
         ('config.yaml is not valid YAML',), ('restore it or start a new run',)),
    Case('sgre_evaluate: a config.yaml that is not text', 'sgre_evaluate', _on_exp(lambda exp, d: put(exp / 'config.yaml', NOT_UTF8)),
         ('config.yaml',), ('restore it or start a new run',)),
    Case('sgre_evaluate: a config.yaml without batch_size', 'sgre_evaluate', _on_exp(_without_batch_size),
         ('config.yaml lacks the option batch_size',), ('restore the file from a copy',)),
    Case('sgre_evaluate: an exp-dir without checkpoint', 'sgre_evaluate',
         _on_exp(lambda exp, d: (exp / 'checkpoints' / 'best_ema_model.pth').unlink()),
         ('has no checkpoint at', 'best_ema_model.pth'), ('--checkpoint',)),
    Case('sgre_evaluate: a --checkpoint that does not exist', 'sgre_evaluate', _on_exp(None, '--checkpoint', lambda w, d: d / 'nope.pth'),
         ('nope.pth does not exist',), ('check the path given to --checkpoint',)),
    Case('sgre_evaluate: a garbled checkpoint', 'sgre_evaluate',
         _on_exp(lambda exp, d: put(d / 'garbled.pth', GARBAGE_PTH), '--checkpoint', lambda w, d: d / 'garbled.pth'),
         ('garbled.pth is not a readable PyTorch checkpoint',), ('pass the .pth file saved by training',)),
    Case('sgre_evaluate: a checkpoint for another number of classes', 'sgre_evaluate',
         _on_exp(None, '--checkpoint', lambda w, d: w.five),
         ('was trained for 5 classes', 'label.txt has 10'), ('evaluate it with the dataset it was trained on',)),
    Case('sgre_evaluate: a truncated test image', 'sgre_evaluate', _on_exp(data_edit=_trunc_png),
         ('cannot read the image', 'images/test/00004.png', 'image file is truncated'), ('replace the file, or remove its line',)),
    Case('sgre_evaluate: --batch-size -5', 'sgre_evaluate', _on_exp(None, '--batch-size', '-5'),
         ('--batch-size',), ('at least 1',)),
    Case('sgre_evaluate: a read-only exp-dir', 'sgre_evaluate', _eval_read_only,
         ('is not writable',), ('fix its permissions',)),

    # ---- sgre_infer
    Case('sgre_infer: an exp-dir that is not an experiment', 'sgre_infer', _not_an_experiment,
         ('has no config.yaml', 'not an experiment folder'), ('sgre_train',)),
    Case('sgre_infer: an exp-dir without checkpoint', 'sgre_infer',
         _on_exp(lambda exp, d: (exp / 'checkpoints' / 'best_ema_model.pth').unlink()),
         ('has no checkpoint at', 'best_ema_model.pth'), ('--checkpoint',)),
    Case('sgre_infer: a garbled checkpoint', 'sgre_infer',
         _on_exp(lambda exp, d: put(d / 'garbled.pth', GARBAGE_PTH), '--checkpoint', lambda w, d: d / 'garbled.pth'),
         ('garbled.pth is not a readable PyTorch checkpoint',), ('pass the .pth file saved by training',)),
    Case('sgre_infer: a checkpoint for another number of classes', 'sgre_infer',
         _on_exp(None, '--checkpoint', lambda w, d: w.five),
         ('was trained for 5 classes', 'label.txt has 10'), ('the dataset it was trained on',)),
    Case('sgre_infer: a non-image file among --images', 'sgre_infer', _on_exp(None, _infer_images),
         ('cannot read the image', 'notes.png', 'cannot identify image file'), ('pass a readable image file',)),
    Case('sgre_infer: --num -31', 'sgre_infer', _on_exp(None, '--num', '-31'),
         ('--num',), ('at least 1',)),
    Case('sgre_infer: a read-only exp-dir', 'sgre_infer', _exp_read_only,
         ('cannot create the folder', 'visualization'), ('choose a destination you can write to',)),
]
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES)
PROGS = ['sgre_prepare', 'sgre_embed', 'sgre_train', 'sgre_evaluate', 'sgre_infer']
assert {c.prog for c in CASES} == set(PROGS)

def params() -> list:
    "Every case, by id."
    return [pytest.param(cid, id=cid) for cid in BY_ID]


# ---------------------------------------------------------------------------------------------------------------
# running the cases

def _run(argv, prefix=(), timeout=300):
    return subprocess.run([*prefix, *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp('bad_input'))


@pytest.fixture(scope='module')
def ran(world):
    """Build every case in its own folder, snapshot what it may write to, run them all two at a time (the interrupted
    training first, as it takes longest), snapshot again."""
    jobs = []
    for k, case in enumerate(CASES):
        d = world.root / 'cases' / f'{k:02d}'
        d.mkdir(parents=True)
        b = case.build(world, d)
        case.argv, case.watch = [exe(case.prog), *b['argv']], b['watch']
        ro, prefix = b.get('read_only', []), ()
        if ro:
            if world.prefix is None:
                case.skipped = 'running as root without setpriv: permission bits cannot be tested'; continue
            prefix = world.prefix
        case.before = listing(*case.watch)
        jobs.append((case, ro, prefix))
    # each command once more with --debug, on a fresh copy of its first case's input
    debug = {}
    for prog in PROGS:
        case = next(c for c in CASES if c.prog == prog and not c.skipped)
        d = world.root / 'debug' / prog
        d.mkdir(parents=True)
        debug[prog] = [exe(prog), *case.build(world, d)['argv'], '--debug']

    def one(job):
        case, ro, prefix = job
        set_writable(ro, False)
        try: case.res = _run(case.argv, prefix)
        finally: set_writable(ro, True)
        case.after = listing(*case.watch)

    with ThreadPoolExecutor(2) as pool:
        interrupted = pool.submit(interrupt_and_resume, world, world.root / 'interrupted')
        futures = [pool.submit(one, j) for j in jobs]
        dbg = {prog: pool.submit(_run, argv) for prog, argv in debug.items()}
        for f in futures: f.result()
        debug = {prog: f.result() for prog, f in dbg.items()}
        try: interrupted = interrupted.result()
        except Exception as e: interrupted = e
    return dict(debug=debug, interrupted=interrupted)


def _case(ran, cid) -> Case:
    case = BY_ID[cid]
    if case.skipped: pytest.skip(case.skipped)
    return case


def _message(case) -> str:
    lines = error_lines(case.res.stderr)
    assert len(lines) == 1, f'{case.argv}\nstderr:\n{case.res.stderr[-3000:]}'
    return lines[0]


@pytest.mark.parametrize('cid', params())
def test_exit_status(ran, cid):
    "Status 2 (an input error; 1 for the environment's) and a single line on stderr, `prog: error: ...`, with no traceback."
    case = _case(ran, cid)
    assert case.res.returncode == case.status, (case.argv, case.res.returncode, case.res.stderr[-3000:])
    assert 'Traceback' not in case.res.stderr, case.res.stderr[-3000:]
    assert _message(case).startswith(f'{case.prog}: error: '), case.res.stderr


@pytest.mark.parametrize('cid', params())
def test_names_problem(ran, cid):
    case = _case(ran, cid)
    msg = _message(case)
    assert msg.startswith(f'{case.prog}: error: ') and 'internal error' not in msg, msg
    for part in case.says: assert part in msg, (part, msg)


@pytest.mark.parametrize('cid', params())
def test_says_fix(ran, cid):
    case = _case(ran, cid)
    msg = _message(case)
    assert msg.startswith(f'{case.prog}: error: ') and 'internal error' not in msg, msg
    for part in case.fix: assert part in msg, (part, msg)
    if 'sgre_prepare --data digits' in msg: assert '--root' not in msg, msg   # digits take no --root


@pytest.mark.parametrize('cid', params())
def test_writes_nothing(ran, cid):
    "The folders the command may write to are as they were: existing results byte-identical, nothing added."
    case = _case(ran, cid)
    added = sorted(set(case.after) - set(case.before))
    changed = sorted(k for k in case.before if case.after.get(k) != case.before[k])
    assert not added and not changed, f'added: {added}\nchanged or removed: {changed}'


@pytest.mark.parametrize('prog', PROGS)
def test_stderr_is_only_the_message(ran, prog):
    "Nothing but the message reaches stderr (no warnings either)."
    case = next(c for c in CASES if c.prog == prog and not c.skipped)
    assert case.res.stderr.strip().splitlines() == error_lines(case.res.stderr), case.res.stderr


@pytest.mark.parametrize('prog', PROGS)
def test_debug_shows_traceback(ran, prog):
    res = ran['debug'][prog]
    assert res.returncode == 2, res.stderr[-3000:]
    assert 'Traceback (most recent call last)' in res.stderr and 'SGREError' in res.stderr, res.stderr[-3000:]
    assert error_lines(res.stderr)[-1].startswith(f'{prog}: error: '), res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C during training, then --resume

class _Reader(threading.Thread):
    "Collects a pipe's output while the process runs (fastprogress writes each batch's progress to stdout)."
    def __init__(self, pipe):
        super().__init__(daemon=True); self.pipe, self.text = pipe, ''
    def run(self):
        for chunk in iter(lambda: os.read(self.pipe.fileno(), 4096), b''): self.text += chunk.decode(errors='replace')


def _loadable(exp: Path):
    last = torch.load(exp / 'checkpoints' / 'last.pth', map_location='cpu', weights_only=True)
    best = torch.load(exp / 'checkpoints' / 'best_ema_model.pth', map_location='cpu', weights_only=True)
    assert isinstance(best, dict) and 'fc.weight' in best and all(torch.is_tensor(v) for v in best.values())
    return last


def _files(exp: Path) -> list:
    "The folder's files; TensorBoard's event files (named by time, host and process) as `events.out.tfevents.*`."
    return sorted(re.sub(r'^events\.out\.tfevents\..*', 'events.out.tfevents.*', str(p.relative_to(exp))) for p in exp.rglob('*'))
def _epochs(exp: Path) -> list: return [int(l.split(',')[0]) for l in (exp / 'history.csv').read_text().splitlines()[1:]]
EXP_FILES = ['checkpoints', 'checkpoints/best_ema_model.pth', 'checkpoints/last.pth', 'config.yaml', 'curves.png',
             'events.out.tfevents.*', 'history.csv', 'train.log']


def interrupt_and_resume(world, runs: Path) -> dict:
    "Train two epochs, SIGINT while the second runs, look at what is left, resume; what was seen at each step."
    argv = [exe('sgre_train'), *TINY, '--max-epochs', '2', '--data-dir', str(world.data), '--exp-root', str(runs)]
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = _Reader(proc.stdout), _Reader(proc.stderr)
    out.start(); err.start()
    exp = runs / 'mlic_digits' / 'exp1'
    try:
        deadline = time.time() + 300
        # epoch 1 is complete, its checkpoints saved: epoch 2 is next (stdout is a pipe, so there are no bars to watch)
        while not ('epoch 1/2 ' in out.text and (exp / 'checkpoints' / 'last.pth').exists()):
            if proc.poll() is not None: raise AssertionError(f'sgre_train ended ({proc.returncode}) before the second epoch\n{err.text[-3000:]}')
            if time.time() > deadline: raise AssertionError(f'the second epoch did not start\n{out.text[-2000:]}')
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    out.join(5); err.join(5)
    seen = dict(exp=exp, returncode=proc.returncode, stderr=err.text, files=_files(exp), epochs=_epochs(exp),
                last_epoch=_loadable(exp)['epoch'])
    res = _run([exe('sgre_train'), '--resume', exp])
    seen.update(resumed=res, files_after=_files(exp), epochs_after=_epochs(exp), log=(exp / 'train.log').read_text(),
                last_epoch_after=_loadable(exp)['epoch'] if res.returncode == 0 else None)
    return seen


def test_interrupt_then_resume(ran):
    """SIGINT while the second epoch runs: exit 130 and a one-line note; the first epoch's checkpoints load and no
    temporary file is left; `sgre_train --resume` then runs the second epoch and ends the run with every file intact."""
    seen = ran['interrupted']
    if isinstance(seen, Exception): raise seen
    assert seen['returncode'] == 130, (seen['returncode'], seen['stderr'][-3000:])
    assert error_lines(seen['stderr']) == [f"sgre_train: interrupted; the state after the last finished epoch is saved in "
                                           f"{seen['exp']}; continue with `sgre_train --resume {seen['exp']}`."], seen['stderr'][-3000:]
    assert seen['files'] == EXP_FILES, seen['files']     # no temporary (dot) file
    assert seen['epochs'] == [1], seen['epochs']         # the run stopped during epoch 2
    assert seen['last_epoch'] == 0                       # last.pth: the state after epoch 1 (0-based)
    res = seen['resumed']
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"experiment folder: {seen['exp']}" in res.stdout, res.stdout[-2000:]
    assert seen['epochs_after'] == [1, 2], seen['epochs_after']
    assert 'resumed after epoch 1' in seen['log'] and 'epoch 2/2' in seen['log'], seen['log']
    assert seen['last_epoch_after'] == 1
    assert seen['files_after'] == sorted(EXP_FILES + ['events.out.tfevents.*']), seen['files_after']   # the resumed fit's own event file


# ---------------------------------------------------------------------------------------------------------------
# a full disk, and a run that learns nothing

def _tmpfs(folder: Path, size: str) -> bool:
    "Mount a small tmpfs at `folder` (root only); False where mounting is not allowed."
    folder.mkdir(parents=True)
    return shutil.which('mount') is not None and subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(folder)],
                                                                 capture_output=True).returncode == 0


def test_full_disk_keeps_the_last_epoch(world, tmp_path):
    """The experiments folder on a small file system that fills during epoch 2's checkpoints (a tmpfs of 150 MB; the tiny
    model's epoch writes about 100 MB): exit status 1, one message naming the folder, the cause and the --resume command,
    no "internal error"; the folder still describes epoch 1, file for file, and no temporary file is left."""
    full = tmp_path / 'small'
    if not _tmpfs(full, '150m'): pytest.skip('mounting a small tmpfs needs root (CAP_SYS_ADMIN)')
    try:
        res = _run([exe('sgre_train'), *TINY, '--max-epochs', '3', '--data-dir', world.data, '--exp-root', full])
        exp = full / 'mlic_digits' / 'exp1'
        assert res.returncode == 1, (res.returncode, res.stderr[-3000:])
        lines = error_lines(res.stderr)
        assert len(lines) == 1 and lines[0].startswith(f'sgre_train: error: cannot write into {exp} (.'), res.stderr[-3000:]
        assert 'no space is left on its file system [ENOSPC]' in lines[0] and 'internal error' not in lines[0], lines
        assert f'The folder still holds the state after epoch 1; once the cause is fixed, continue with `sgre_train --resume {exp}`' in lines[0], lines
        assert _epochs(exp) == [1]
        assert _loadable(exp)['epoch'] == 0
        assert not [p for p in exp.rglob('.*')], list(exp.rglob('.*'))      # no temporary file, no lock left
    finally:
        subprocess.run(['umount', str(full)], capture_output=True)


def test_diverged_run_warns(world, tmp_path):
    "`--lr 10`: the loss grows tenfold and every image gets the same scores; the run ends (status 0) but says so, in the log and the summary."
    res = _run([exe('sgre_train'), *TINY, '--max-epochs', '2', '--lr', '10', '--data-dir', world.data, '--exp-root', tmp_path / 'runs'])
    assert res.returncode == 0, res.stderr[-3000:]
    warned = [l for l in error_lines(res.stderr) if l.startswith('sgre_train: warning: epoch ')]
    assert warned and all('Try a learning rate 10 to 100 times lower' in l or 'so it is not learning' in l for l in warned), res.stderr
    assert 'warning: this run did not learn as it should' in res.stdout, res.stdout[-2000:]
    log = (tmp_path / 'runs' / 'mlic_digits' / 'exp1' / 'train.log').read_text()
    assert sum(l.startswith('warning: epoch ') for l in log.splitlines()) == len(warned), log
