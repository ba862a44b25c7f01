"""The README's main command, verbatim, in an empty folder: `sgre_train` prepares the built-in digits set and its
embeddings, trains the default configuration within 6 minutes to a test mAP of at least 0.90, and writes the whole
experiment folder; then `sgre_evaluate` and `sgre_infer` run on that experiment, and the trained model's attention
points at the digits (the share of each present digit's attention inside its box is well above the box's area share);
then the README's export, calibrate and predict: the rule kept is the one with the higher cross-validated CF1, it beats
the raw scores at 0.5 held out and lowers the calibration error, and `sgre_predict` applies it.
"""
import json, os, re, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

from sgre.experiment import load_run
from sgre.metrics import mean_ap
from sgre.viz import attention_in_boxes

ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')
BIN = Path(sys.executable).parent


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp('newcomer')
    t = time.time()
    res = subprocess.run([str(BIN / 'sgre_train')], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    secs = time.time() - t
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cwd, res.stdout, secs


def test_main_command(trained):
    cwd, out, secs = trained
    print(f'sgre_train took {secs:.0f} s')
    assert secs <= 360, f"the default run took {secs:.0f} s (limit: 6 minutes on 2 CPU cores)"
    m = re.search(r'best test mAP \(EMA weights\) ([0-9.]+) at epoch (\d+).*experiment folder: (\S+)', out)
    assert m, out[-2000:]
    assert float(m.group(1)) >= 0.90, out[-2000:]
    exp = cwd / m.group(3)
    assert exp == cwd / 'experiments' / 'mlic_digits' / 'exp1'
    for f in ('config.yaml', 'train.log', 'history.csv', 'curves.png', 'checkpoints/best_ema_model.pth', 'checkpoints/last.pth'):
        assert (exp / f).is_file(), f
    assert (cwd / 'data' / 'digits' / 'minilm.npy').is_file()


def test_evaluate_and_infer(trained):
    cwd, out, _ = trained
    exp = cwd / 'experiments' / 'mlic_digits' / 'exp1'
    res = subprocess.run([str(BIN / 'sgre_evaluate'), '--exp-dir', str(exp)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    reported = float(re.search(r'best test mAP \(EMA weights\) ([0-9.]+)', out).group(1))
    evaluated = float(re.search(r'^mAP ([0-9.]+)', res.stdout, re.M).group(1))
    assert abs(reported - evaluated) < 1e-4, (reported, evaluated)
    S, Y = np.load(exp / 'scores.npy'), np.load(exp / 'targets.npy')
    assert S.shape == Y.shape == (500, 10) and abs(mean_ap(S, Y) - evaluated) < 1e-4
    for f in ('result.txt', 'prediction.txt', 'pr_curves.png', 'per_class_ap.png', 'report.html'): assert (exp / f).is_file(), f
    res = subprocess.run([str(BIN / 'sgre_infer'), '--exp-dir', str(exp), '--num', '2'], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    folders = sorted(p.name for p in (exp / 'visualization').iterdir())
    assert folders == ['00000', '00001'], folders
    assert {'image.png', 'grid.png'} <= {p.name for p in (exp / 'visualization' / '00000').iterdir()}


def test_attention_points_at_the_digits(trained):
    cwd, _, _ = trained   # evaluated from elsewhere: the run's relative data/digits is found beside experiments/
    loc = attention_in_boxes(load_run(cwd / 'experiments' / 'mlic_digits' / 'exp1'), cwd / 'data' / 'digits')
    print(loc)
    assert loc['n'] > 1000 and loc['mass'] > 2.5 * loc['share'], loc


def _run(cwd, *cmd):
    res = subprocess.run([str(BIN / cmd[0]), *map(str, cmd[1:])], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_export_calibrate_predict(trained):
    cwd, _, _ = trained
    _run(cwd, 'sgre_export', '--exp-dir', 'experiments/mlic_digits/exp1', '--dest', 'models/digits')
    out = _run(cwd, 'sgre_calibrate', '--model', 'models/digits', '--data-dir', 'data/digits')
    rows = {m.group(1).strip(): [float(v) for v in m.group(2).split()]
            for m in re.finditer(r'^(raw scores, threshold 0\.5|temperature, one global threshold \(F1\)|temperature, per-class thresholds \(F1\))'
                                 r'((?:\s+[0-9.]+){8})$', out, re.M)}
    assert len(rows) == 3, out
    raw, glob, per = rows['raw scores, threshold 0.5'], rows['temperature, one global threshold (F1)'], rows['temperature, per-class thresholds (F1)']
    kept = 'per-class' if per[2] >= glob[2] else 'global'            # CF1 is the third column
    best = per if kept == 'per-class' else glob
    assert f"thresholds: {'per-class' if kept == 'per-class' else 'one global threshold'}, the higher cross-validated CF1" in out, out
    assert best[2] > raw[2] and best[6] < raw[6], out                 # CF1 up, ECE down, held out
    saved = json.loads((cwd / 'models/digits/calibration.json').read_text())
    assert saved['threshold_kind'] == kept and saved['fitted_on']['images'] == 500, saved['fitted_on']
    out = _run(cwd, 'sgre_predict', '--model', 'models/digits', 'data/digits/images/test', '--out', 'predictions.csv')
    name = 'per-class thresholds' if kept == 'per-class' else 'one threshold'
    assert f'scored 500 images with PyTorch (10 labels, calibrated scores and {name} from calibration.json)' in out, out
