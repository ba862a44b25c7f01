"""A trained model leaves its experiment (issue 10): on a fresh install, the digits demo trained from the command line
is exported with `sgre_export`; the model folder is moved elsewhere, the dataset and the experiment are deleted, and
`sgre_predict` scores a folder of images from the model folder alone, with PyTorch and with `--onnx`, into CSV files.

The demo set is prepared smaller than its default (300 training and 60 test images at 32 px) and trained for one epoch
at 32 px, so that the whole flow takes about two minutes on two CPU cores; the label embeddings are the demo's (MiniLM,
computed by `sgre_train`), so the model folder must carry them in its weights once the dataset is gone.

Before the dataset goes, a copy of the model folder is calibrated on its test split with `sgre_calibrate` (issue 23): the
decision rule travels in the folder as calibration.json, and `predict`, `sgre_predict` and `sgre_predict --onnx` must apply
it alike, while `--raw` and the uncalibrated folder give exactly today's files.
"""
import csv, json, os, shutil, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')
BIN = Path(sys.executable).parent
TIMES = {}


def _cmd(prog):
    "The console script, or (before `pip install -e .` has made a new one) its entry point run by this Python."
    if (BIN / prog).exists(): return [str(BIN / prog)]
    module, fn = {'sgre_calibrate': ('sgre.calibration', 'sgre_calibrate_cli')}[prog]
    return [sys.executable, '-c', f'import sys; sys.argv[0] = {prog!r}; from {module} import {fn}; {fn}()']


def _run(prog, *args, cwd):
    t = time.time()
    res = subprocess.run([*_cmd(prog), *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    TIMES[prog] = TIMES.get(prog, 0) + time.time() - t
    return res


def _ok(res):
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert 'Traceback' not in res.stderr and 'Warning' not in res.stderr, res.stderr[-3000:]
    return res


def _table(path: Path) -> tuple:   # (header, rows)
    with open(path, newline='', encoding='utf-8') as f: rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture(scope='module')
def flow(tmp_path_factory):
    root = tmp_path_factory.mktemp('deploy')
    work, user = root / 'work', root / 'user'
    work.mkdir(); user.mkdir()
    t0 = time.time()
    _ok(_run('sgre_prepare', '--data', 'digits', '--n-train', '300', '--n-test', '60', '--size', '32', cwd=work))
    _ok(_run('sgre_train', '--data', 'digits', '--max-epochs', '1', '--img-size', '32', '--attn-dim', '32', cwd=work))
    exp = work / 'experiments' / 'mlic_digits' / 'exp1'
    # a few test images, kept outside the dataset: two folders deep, with a broken image and a text file
    inbox = user / 'inbox'
    (inbox / 'more').mkdir(parents=True)
    tests = sorted((work / 'data' / 'digits' / 'images' / 'test').glob('*.png'))[:6]
    for i, f in enumerate(tests): shutil.copy(f, inbox / ('more' if i >= 4 else '') / f'digit{i}.png')
    (inbox / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a JPEG')
    (inbox / 'notes.txt').write_text('not an image')
    # what the experiment itself predicts, before it goes
    _ok(_run('sgre_predict', '--model', exp, 'inbox', '--out', 'from_experiment.csv', cwd=user))
    export = _ok(_run('sgre_export', '--exp-dir', exp, cwd=work))
    model = root / 'elsewhere' / 'digits-model'
    model.parent.mkdir()
    shutil.move(exp / 'export', model)
    calibrated = root / 'elsewhere' / 'calibrated-model'
    shutil.copytree(model, calibrated)
    calibrate = _ok(_run('sgre_calibrate', '--model', calibrated, '--data-dir', work / 'data' / 'digits', '--folds', '3', cwd=work))
    shutil.rmtree(work)                                  # the dataset (images, label.txt, minilm.npy) and the experiment
    torch_res = _ok(_run('sgre_predict', '--model', model, 'inbox', '--out', 'torch.csv', cwd=user))
    onnx_res = _ok(_run('sgre_predict', '--model', model, 'inbox', '--out', 'onnx.csv', '--onnx', cwd=user))
    cal = {kind: _ok(_run('sgre_predict', '--model', calibrated, 'inbox', '--out', f'cal-{kind}.csv', *flags, cwd=user))
           for kind, flags in (('torch', ()), ('onnx', ('--onnx',)), ('raw', ('--raw',)), ('raw-onnx', ('--raw', '--onnx')))}
    print(f'flow took {time.time() - t0:.0f} s:', {k: round(v) for k, v in TIMES.items()})
    return dict(model=model, user=user, inbox=inbox, export=export, torch=torch_res, onnx=onnx_res, calibrated=calibrated,
                calibrate=calibrate, cal=cal)


def test_model_folder(flow):
    model = flow['model']
    assert sorted(p.name for p in model.iterdir()) == ['README.md', 'config.json', 'labels.txt', 'model.onnx', 'model.safetensors']
    config = json.loads((model / 'config.json').read_text())
    assert (config['arch'], config['img_size'], config['embeddings'], config['embed_type'], config['num_classes']) == \
        ('resnet10t', 32, 'fixed', 'minilm', 10)
    assert config['onnx']['checked_rel_diff'] <= 1e-4
    assert 'wrote the model folder' in flow['export'].stdout
    assert 'Test mAP' in (model / 'README.md').read_text()           # the best EMA mAP of history.csv (not evaluated)


def test_predictions(flow):
    user, model = flow['user'], flow['model']
    labels = (model / 'labels.txt').read_text().splitlines()
    threshold = json.loads((model / 'config.json').read_text())['threshold']
    header, rows = _table(user / 'torch.csv')
    assert header == ['image', *labels, 'labels']
    assert [r[0] for r in rows] == [f'inbox/digit{i}.png' for i in range(4)] + [f'inbox/more/digit{i}.png' for i in (4, 5)]
    scores = np.array([[float(v) for v in r[1:-1]] for r in rows])
    assert scores.shape == (6, 10) and (scores >= 0).all() and (scores <= 1).all()
    for r, s in zip(rows, scores):                                   # the paper's rule, highest score first
        want = sorted((l for l, v in zip(labels, s) if v >= threshold), key=lambda l: -s[labels.index(l)])
        assert r[-1].split(';') == want if want else r[-1] == '', (r, want)
    o_header, o_rows = _table(user / 'onnx.csv')
    assert o_header == header and [r[0] for r in o_rows] == [r[0] for r in rows]
    assert np.abs(np.array([[float(v) for v in r[1:-1]] for r in o_rows]) - scores).max() <= 1e-4
    _, e_rows = _table(user / 'from_experiment.csv')                # the model folder predicts what the experiment did
    assert np.abs(np.array([[float(v) for v in r[1:-1]] for r in e_rows]) - scores).max() <= 1e-6
    assert [r[-1] for r in e_rows] == [r[-1] for r in rows]


def test_unreadable_file_skipped_and_counted(flow):
    for kind in ('torch', 'onnx'):
        res = flow[kind]
        assert res.stdout.splitlines() == [f"scored 6 images with {'onnxruntime' if kind == 'onnx' else 'PyTorch'} (10 labels, "
                                           f"threshold 0.5); 1 file could not be read, skipped; wrote {kind}.csv"], res.stdout
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith('sgre_predict: skipped inbox/broken.jpg: cannot read the image'), res.stderr


def test_nothing_readable(flow):
    user = flow['user']
    res = _run('sgre_predict', '--model', flow['model'], 'inbox/broken.jpg', 'inbox/notes.txt', '--out', 'none.csv', cwd=user)
    assert res.returncode == 2 and res.stdout == '', res.stdout + res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 3 and lines[:2] == [l for l in lines[:2] if l.startswith('sgre_predict: skipped inbox/')], lines
    assert lines[2] == 'sgre_predict: error: none of the 2 paths given could be read as an image (each is listed above); nothing was written.'
    assert not (user / 'none.csv').exists() and not [p for p in user.iterdir() if p.name.startswith('.none.csv')]


def test_calibrated_everywhere(flow):
    "The rule of calibration.json gives the same calibrated scores and labels via predict, sgre_predict and sgre_predict --onnx."
    from sgre.calibration import read_calibration
    from sgre.deploy import load_model
    from sgre.viz import predict
    user, cal = flow['user'], flow['calibrated']
    assert 'cross-validated over 3 folds' in flow['calibrate'].stdout and (cal / 'calibration.json').is_file()
    try: import sgre.report  # noqa: F401
    except ImportError: pass
    else: assert (cal / 'report.html').is_file()
    labels = (cal / 'labels.txt').read_text().splitlines()
    rule = read_calibration(cal, labels)
    assert rule.info['fitted_on']['images'] == 60 and rule.info['fitted_on']['split'] == 'test'
    header, rows = _table(user / 'cal-torch.csv')
    _, o_rows = _table(user / 'cal-onnx.csv')
    scores = np.array([[float(v) for v in r[1:-1]] for r in rows])
    o_scores = np.array([[float(v) for v in r[1:-1]] for r in o_rows])
    assert np.abs(o_scores - scores).max() <= 1e-4
    model = load_model(cal)
    for r, s in zip(rows, scores):
        got = dict(predict(model, user / r[0]))
        assert np.abs(np.array([got[l] for l in labels]) - s).max() <= 2e-6              # six decimals, one image at a time
        want = sorted((l for l in labels if got[l] >= model.thresholds[l]), key=lambda l: -got[l])
        assert r[-1] == ';'.join(want), (r, want)
    assert [r[-1] for r in o_rows] == [r[-1] for r in rows]
    raw_scores = np.array([[float(v) for v in r[1:-1]] for r in _table(user / 'torch.csv')[1]])
    assert np.abs(scores - raw_scores).max() > 1e-3                                   # calibration changed the scores
    for kind in ('torch', 'onnx'):
        line = flow['cal'][kind].stdout.splitlines()
        assert line == [f"scored 6 images with {'onnxruntime' if kind == 'onnx' else 'PyTorch'} (10 labels, calibrated scores and "
                        f"per-class thresholds from calibration.json); 1 file could not be read, skipped; wrote cal-{kind}.csv"], line


def test_raw_is_todays_output(flow):
    "--raw on the calibrated folder writes the bytes the uncalibrated folder writes, which are today's."
    user = flow['user']
    assert (user / 'cal-raw.csv').read_bytes() == (user / 'torch.csv').read_bytes()
    assert (user / 'cal-raw-onnx.csv').read_bytes() == (user / 'onnx.csv').read_bytes()
    assert flow['cal']['raw'].stdout == flow['torch'].stdout.replace('threshold 0.5', 'threshold 0.5, uncalibrated scores (--raw)').replace('torch.csv', 'cal-raw.csv')


def test_dangling_link_reported(flow):
    "A dangling symbolic link named like an image, in a folder or given itself, is skipped with its own line."
    user = flow['user']
    links = user / 'links'
    links.mkdir()
    shutil.copy(user / 'inbox' / 'digit0.png', links / 'real.png')
    (links / 'gone.png').symlink_to(user / 'deleted.png')
    (user / 'gone.jpg').symlink_to(user / 'deleted.jpg')
    res = _ok(_run('sgre_predict', '--model', flow['model'], 'links', 'gone.jpg', '--out', 'links.csv', cwd=user))
    assert res.stderr.splitlines() == [f"sgre_predict: skipped links/gone.png: a symbolic link to {user / 'deleted.png'}, which does not exist",
                                       f"sgre_predict: skipped gone.jpg: a symbolic link to {user / 'deleted.jpg'}, which does not exist"]
    assert res.stdout == 'scored 1 image with PyTorch (10 labels, threshold 0.5); 2 files could not be read, skipped; wrote links.csv\n'
