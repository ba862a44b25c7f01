"""Two machines, played by two `torchrun` launches on localhost (one CPU process each, gloo): they train together into one
experiment folder; when one machine dies in the middle of an epoch (its worker, its launcher, or both; machine 1 or
machine 0, which holds the run's key-value store), the other stops within a minute with the command that resumes, and
that command, launched again on both machines, finishes the run."""
import csv, os, signal, socket, subprocess, sys, time
from pathlib import Path

import psutil
import pytest
import torch

from sgre.data import prepare_digits
from sgre.experiment import build_learner, read_config
from sgre.metrics import mean_ap
from sgre.train import predict_dl

TINY = ['--data', 'digits', '--arch', 'resnet10t', '--no-pretrained', '--img-size', '32', '--output-stride', '8',
        '--batch-size', '16', '--embed-type', 'random', '--attn-dim', '32', '--num-heads', '2', '--num-workers', '0',
        '--no-flip', '--lr', '1e-3', '--ema-decay', '0.9']
# CPU processes whatever the machine has (two processes on one GPU would not work), no network
ENV = dict(os.environ, OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='', ACCELERATE_USE_CPU='1')


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return prepare_digits(tmp_path_factory.mktemp('data') / 'digits', n_train=96, n_test=40, size=32, seed=0)


@pytest.fixture(scope='module')
def digits_long(tmp_path_factory):
    "Epochs of several seconds, so that a machine dies well inside one, and the others' stop can be told from its end."
    return prepare_digits(tmp_path_factory.mktemp('data') / 'digits', n_train=320, n_test=40, size=32, seed=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Machine:
    "One `torchrun` launch with one worker: node `rank` of 2. Worker output goes to files (`--redirects`), the agent's to others."
    def __init__(self, rank: int, port: int, argv: list, root: Path, logs: Path):
        self.rank, self.logs = rank, logs / f'node{rank}'
        self.logs.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--nproc-per-node', '1', '--node-rank', str(rank),
               '--master-addr', '127.0.0.1', '--master-port', str(port), '--max-restarts', '0',
               '--log-dir', str(self.logs / 'workers'), '--redirects', '3', '-m', 'sgre.train', *argv]
        self.out, self.err = open(self.logs / 'agent.out', 'w'), open(self.logs / 'agent.err', 'w')
        # a session of its own, like a machine; `kill` walks the process tree, as torchrun gives its workers their own sessions
        self.proc = subprocess.Popen(cmd, cwd=root, env=ENV, stdout=self.out, stderr=self.err, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try: return self.proc.wait(timeout=timeout)
        finally: self.out.close(); self.err.close()

    def worker(self, stream: str) -> str:
        "The worker's stdout or stderr."
        files = sorted((self.logs / 'workers').rglob(f'{stream}.log'))
        assert len(files) == 1, files
        return files[0].read_text()

    def agent(self) -> str: return (self.logs / 'agent.err').read_text()

    def kill(self, what: str = 'machine') -> list:
        """SIGKILL, as when a machine dies: 'machine' the agent and every process under it; 'launcher' the agent's process
        group (`setsid torchrun ...` then `kill -9 -PGID`), which holds the agent alone, as torchrun gives its workers sessions
        of their own; 'worker' the worker alone. Returns the worker pids, to check that none outlives the run."""
        p = psutil.Process(self.proc.pid)
        workers = p.children(recursive=True)
        if what == 'launcher': os.killpg(self.proc.pid, signal.SIGKILL)
        for q in {'machine': [p] + workers, 'worker': workers, 'launcher': []}[what]:
            try: q.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess: pass
        return [q.pid for q in workers]

    def stop(self):
        if self.proc.poll() is None: self.kill(); self.proc.wait(30)
        self.out.close(); self.err.close()


def _launch(root: Path, argv: list, logs: str = 'logs') -> list:
    port = _free_port()
    return [Machine(r, port, argv, root, root / logs) for r in (0, 1)]


def _finish(machines, timeout=420):
    try: return [m.wait(timeout) for m in machines]
    finally:
        for m in machines: m.stop()


def _rows(exp: Path) -> list: return list(csv.DictReader(open(exp / 'history.csv')))


def _ema_map_of_saved_weights(exp: Path) -> float:
    "Single-process mAP of the saved EMA weights on the run's validation set."
    cfg = read_config(exp)
    learn = build_learner({k: v for k, v in cfg.items() if k not in ('num_classes', 'labels', 'world_size')}, device='cpu')
    learn.model.load_state_dict(torch.load(exp / 'checkpoints' / 'best_ema_model.pth', map_location='cpu'))
    s, t = predict_dl(learn.model, learn.dls.valid)
    return mean_ap(s.numpy(), t.numpy())


def test_two_machines_train_together(tmp_path, digits):
    machines = _launch(tmp_path, [*TINY, '--data-dir', str(digits), '--max-epochs', '1', '--exp-root', str(tmp_path / 'experiments')])
    codes = _finish(machines)
    assert codes == [0, 0], [(m.worker('stderr')[-2000:], m.agent()[-2000:]) for m in machines]
    exps = [p for p in (tmp_path / 'experiments' / 'mlic_digits').iterdir() if p.is_dir()]
    assert [p.name for p in exps] == ['exp1'], exps                        # one folder, written by global rank 0
    exp = exps[0]
    log = (exp / 'train.log').read_text()
    assert '2 process(es): rank 0' in log and 'rank 1 (pid' in log, log     # both machines joined
    assert 'samples per rank [48, 48]' in log, log                        # each trained on half of the 96 images
    assert read_config(exp)['world_size'] == 2
    assert len(list(exp.glob('events.out.tfevents.*'))) == 1               # TensorBoard: rank 0 only
    assert f'experiment folder: {exp}' in machines[0].worker('stdout')     # the summary, from rank 0 only
    assert machines[1].worker('stdout') == '' and [m.worker('stderr') for m in machines] == ['', '']
    row = _rows(exp)[-1]
    assert abs(_ema_map_of_saved_weights(exp) - float(row['ema_mAP'])) <= 1e-6, row


def _alive(pids) -> list:
    out = []
    for pid in pids:
        try: out += [pid] if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE else []
        except psutil.NoSuchProcess: pass
    return out


LOST = {  # what dies: (which machine, what of it); the other machine is the survivor
    'machine 1': (1, 'machine'), 'worker 1': (1, 'worker'), 'launcher 1': (1, 'launcher'), 'launcher 0': (0, 'launcher')}


@pytest.mark.parametrize('lost', list(LOST))
def test_machine_lost_then_resume(tmp_path, digits_long, lost):
    """In the middle of epoch 2 of 3, a machine dies: its worker, its launcher (the agent's process group, SIGKILL), or
    both. The other machine stops within a minute with one message: a peer was lost, what is kept, the resume command;
    the folder keeps epoch 1; no process of either machine is left. Then `--resume` on both machines trains epochs 2
    and 3."""
    dead, what = LOST[lost]
    exp = tmp_path / 'experiments' / 'mlic_digits' / 'exp1'
    machines = _launch(tmp_path, [*TINY, '--data-dir', str(digits_long), '--max-epochs', '3', '--exp-root', str(tmp_path / 'experiments')])
    survivor = machines[1 - dead]
    workers = []
    try:
        deadline = time.time() + 300
        while not ((exp / 'checkpoints' / 'last.pth').exists() and (exp / 'history.csv').exists()):   # epoch 1 is saved
            assert time.time() < deadline and all(m.proc.poll() is None for m in machines), [m.agent()[-2000:] for m in machines]
            time.sleep(0.05)
        epoch_s = float(_rows(exp)[0]['seconds'])
        time.sleep(0.3 * epoch_s)                                          # well inside epoch 2, which takes about as long
        assert len(_rows(exp)) == 1, 'epoch 2 ended before the kill; make the epochs longer'
        workers = [q.pid for m in machines for q in psutil.Process(m.proc.pid).children(recursive=True)]
        machines[dead].kill(what)
        killed = time.time()
        code = survivor.wait(120)
        took = time.time() - killed
        while _alive(workers) and time.time() < killed + 60: time.sleep(0.2)   # the lost machine's orphan stops too
        left = _alive(workers)
    finally:
        for m in machines: m.stop()
        for pid in _alive(workers): os.kill(pid, signal.SIGKILL)
    print(f'{lost} killed; epoch 1: {epoch_s:.1f} s; the surviving machine exited {took:.1f} s later')
    assert code != 0 and took < 60, (code, took)
    assert left == [], f'processes left running 60 s after the kill: {left}'
    err = survivor.worker('stderr')
    assert err.splitlines() == [
        'sgre_train: error: another process of this distributed run was lost (its connection closed: it was killed, ran out of '
        f'memory, or its machine failed); the state after the last finished epoch is saved in {exp}. Resume it with '
        f'`sgre_train --resume {exp}` on every machine, launched as before (`accelerate launch ... -m sgre.train --resume {exp}`, '
        'or the same with `torchrun`).'], err
    if what == 'launcher':                                                # the orphaned worker said why it stopped
        orphan = machines[dead].worker('stderr')
        assert orphan.startswith('sgre_train: error: the launcher of this process (pid ') and f'--resume {exp}' in orphan, orphan
    assert torch.load(exp / 'checkpoints' / 'last.pth', map_location='cpu', weights_only=False)['epoch'] == 0
    assert [r['epoch'] for r in _rows(exp)] == ['1']

    machines = _launch(tmp_path, ['--resume', str(exp)], logs='logs_resume')
    codes = _finish(machines)
    assert codes == [0, 0], [(m.worker('stderr')[-2000:], m.agent()[-2000:]) for m in machines]
    assert [r['epoch'] for r in _rows(exp)] == ['1', '2', '3']
    assert torch.load(exp / 'checkpoints' / 'last.pth', map_location='cpu', weights_only=False)['epoch'] == 2
    log = (exp / 'train.log').read_text()
    assert 'resumed after epoch 1' in log and 'fit: epochs 2..3, 2 process(es)' in log, log
    best = max(_rows(exp), key=lambda r: float(r['ema_mAP']))
    assert abs(_ema_map_of_saved_weights(exp) - float(best['ema_mAP'])) <= 1e-6, best
