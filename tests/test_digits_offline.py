"""`--data digits` names the built-in demo: `sgre_train --data digits` and the README's CPU DDP command with
`--data digits` prepare the set and its label embeddings and train the demo recipe offline. Their standard output
goes to a pipe here, as in a cluster job's log file: it must hold plain lines (one per epoch and the summary), no
progress-bar frames."""
import os, re, subprocess, sys
from pathlib import Path

import yaml

ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1')
BIN = Path(sys.executable).parent
EPOCH = re.compile(r'^epoch (\d+)/(\d+)  train_loss [0-9.]+  valid_loss [0-9.]+  mAP [0-9.]+  ema_mAP [0-9.]+  time [0-9.]+s$')
OTHER = ('preparing the built-in digits demo set in data/digits ...', 'computing minilm label embeddings ...',
         'best test mAP (EMA weights) ')


def _check(cwd: Path, res: subprocess.CompletedProcess, epochs: int):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    exp = cwd / 'experiments' / 'mlic_digits' / 'exp1'
    cfg = yaml.safe_load((exp / 'config.yaml').read_text())
    # the demo's recipe, not the paper's defaults (BERT embeddings, a pretrained ResNet-101 at 448 px)
    assert (cfg['data'], cfg['arch'], cfg['embed_type'], cfg['pretrained'], cfg['img_size'], cfg['max_epochs']) == \
        ('digits', 'resnet10t', 'minilm', False, 64, epochs), cfg
    assert (cwd / 'data' / 'digits' / 'minilm.npy').is_file()
    lines = res.stdout.splitlines()
    epoch_lines = [m.groups() for m in map(EPOCH.match, lines) if m]
    assert epoch_lines == [(str(i), str(epochs)) for i in range(1, epochs + 1)], res.stdout
    strays = [l for l in lines if not EPOCH.match(l) and not l.startswith(OTHER)]
    assert not strays, strays                                  # nothing but the plain lines
    assert '\r' not in res.stdout and len(res.stdout) < 2000, res.stdout


def test_train_data_digits(tmp_path):
    res = subprocess.run([str(BIN / 'sgre_train'), '--data', 'digits', '--max-epochs', '1'], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True, timeout=900)
    _check(tmp_path, res, 1)
    assert res.stdout.splitlines()[-1].startswith('best test mAP (EMA weights) ')
    assert 'bert' not in res.stderr and 'Traceback' not in res.stderr, res.stderr[-2000:]


def test_readme_cpu_ddp_data_digits(tmp_path):
    # the README's CPU DDP command, with one epoch instead of the demo's six
    env = dict(ENV, ACCELERATE_USE_CPU='1')
    cmd = [str(BIN / 'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '-m', 'sgre.train',
           '--data', 'digits', '--max-epochs', '1']
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    _check(tmp_path, res, 1)
    log = (tmp_path / 'experiments' / 'mlic_digits' / 'exp1' / 'train.log').read_text()
    assert '2 process(es): rank 0' in log and 'rank 1 (pid' in log, log
    a, b = map(int, re.search(r'samples per rank \[(\d+), (\d+)\]', log).groups())
    assert a == b and 2000 - 2 * 32 < a + b <= 2000, log        # the 2,000 training images split between the ranks
