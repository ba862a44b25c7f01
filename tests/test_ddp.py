"""DDP on two CPU processes through `accelerate launch`: both ranks train, the reported EMA mAP is the
mAP of the saved EMA weights, and only one experiment folder is written."""
import csv, os, subprocess, sys
from pathlib import Path

import pytest
import torch

from sgre.data import prepare_digits, read_prepared
from sgre.metrics import mean_ap
from sgre.experiment import build_learner, read_config
from sgre.train import predict_dl

ROOT = Path(__file__).resolve().parents[1]


def _launch(tmp_path, *extra, precision='no', root='experiments'):
    env = dict(os.environ, ACCELERATE_USE_CPU='1', OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', precision, '--dynamo_backend', 'no',
           '-m', 'sgre.train', '--data', 'digits', '--data-dir', str(tmp_path / 'digits'),
           '--arch', 'resnet10t', '--no-pretrained', '--img-size', '32', '--output-stride', '8',
           '--batch-size', '16', '--max-epochs', '1', '--embed-type', 'random', '--attn-dim', '32',
           '--num-heads', '2', '--num-workers', '0', '--no-flip', '--lr', '1e-3', '--ema-decay', '0.9',
           '--exp-root', str(tmp_path / root), *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_cpu_processes(tmp_path):
    prepare_digits(tmp_path / 'digits', n_train=96, n_test=40, size=32, seed=0)
    res = _launch(tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exps = [p for p in (tmp_path / 'experiments' / 'mlic_digits').iterdir() if p.is_dir()]
    assert [p.name for p in exps] == ['exp1'], exps                       # one folder, written by rank 0 only
    exp = exps[0]
    log = (exp / 'train.log').read_text()
    assert '2 process(es): rank 0' in log and 'rank 1 (pid' in log, log   # both ranks joined
    assert 'samples per rank [48, 48]' in log, log                       # and each trained on half the data
    cfg = read_config(exp)
    assert cfg['world_size'] == 2
    row = list(csv.DictReader(open(exp / 'history.csv')))[-1]
    # single-process evaluation of the saved EMA weights on the same validation set
    learn = build_learner({k: v for k, v in cfg.items() if k not in ('num_classes', 'labels', 'world_size')}, device='cpu')
    learn.model.load_state_dict(torch.load(exp / 'checkpoints' / 'best_ema_model.pth', map_location='cpu'))
    s, t = predict_dl(learn.model, learn.dls.valid)
    assert len(s) == 40
    assert abs(mean_ap(s.numpy(), t.numpy()) - float(row['ema_mAP'])) <= 1e-6, (mean_ap(s.numpy(), t.numpy()), row)


def test_accelerate_precision_does_not_switch_autocast_on(tmp_path):
    """`accelerate launch --mixed_precision bf16` (what a saved `accelerate config` choice does: the launcher passes it on as
    ACCELERATE_MIXED_PRECISION) must not run the forward under autocast behind sgre's back: sgre's `--amp` decides. The run
    gives the weights of a run launched with `--mixed_precision no`, bit for bit (a bfloat16 forward changes them), and says
    once that the setting was ignored."""
    prepare_digits(tmp_path / 'digits', n_train=64, n_test=16, size=32, seed=0)
    runs = {p: _launch(tmp_path, precision=p, root=f'runs_{p}') for p in ('no', 'bf16')}
    for p, res in runs.items(): assert res.returncode == 0, p + res.stdout[-3000:] + res.stderr[-3000:]
    weights = {p: torch.load(tmp_path / f'runs_{p}' / 'mlic_digits' / 'exp1' / 'checkpoints' / 'last.pth', weights_only=True)['model']
               for p in runs}
    assert weights['no'].keys() == weights['bf16'].keys()
    for k, v in weights['no'].items(): assert torch.equal(v, weights['bf16'][k]), k
    notes = [l for l in runs['bf16'].stdout.splitlines() if l.startswith('note: accelerate asks for mixed precision')]
    assert len(notes) == 1 and 'ACCELERATE_MIXED_PRECISION=bf16' in notes[0] and '--amp' in notes[0], runs['bf16'].stdout[-2000:]
    assert not [l for l in runs['no'].stdout.splitlines() if l.startswith('note: accelerate')]


def _ours(stderr: str) -> list:
    "The lines our processes printed (the launcher adds its own report of the failed processes)."
    return [l for l in stderr.splitlines() if l.startswith('sgre_train:')]


def _no_run_left(tmp_path) -> bool:
    runs = tmp_path / 'experiments' / 'mlic_digits'
    return not runs.exists() or not any(runs.iterdir())


def test_batch_size_must_split(tmp_path):
    "Both processes meet the same user error: it is printed once."
    prepare_digits(tmp_path / 'digits', n_train=32, n_test=16, size=32, seed=0)
    res = _launch(tmp_path, '--batch-size', '15')
    assert res.returncode != 0
    assert not [l for l in res.stderr.splitlines() if l.lstrip().startswith('File "') and '/sgre/' in l], res.stderr[-3000:]
    assert _ours(res.stderr) == ['sgre_train: error: the batch size 15 does not split evenly over 2 processes; use a multiple '
                                 'of 2, e.g. --batch-size 14.'], res.stderr[-3000:]
    assert _no_run_left(tmp_path)


def test_error_on_one_process_only(tmp_path):
    """A user error that only rank 1 meets (a damaged test image in the half of the validation set it reads, at the end
    of epoch 1): rank 1 prints it; rank 0, which then loses rank 1 in the middle of the validation, prints nothing, and
    removes the run's folder (no epoch was saved)."""
    data = prepare_digits(tmp_path / 'digits', n_train=32, n_test=16, size=32, seed=0)
    bad = Path(read_prepared(data).test[-1][0])
    bad.write_bytes(b'not a png')
    res = _launch(tmp_path)
    assert res.returncode != 0
    ours = _ours(res.stderr)
    assert len(ours) == 1 and ours[0].startswith(f'sgre_train: error: cannot read the image {bad} ('), res.stderr[-3000:]
    assert not [l for l in res.stderr.splitlines() if l.lstrip().startswith('File "') and '/sgre/' in l], res.stderr[-3000:]
    assert _no_run_left(tmp_path)
