"""The `sgre_prepare` console script, run as a user runs it (a subprocess), and loading errors from worker processes.

The preparers' rules and their error messages are tested in nbs/01_data.ipynb; these tests check what only a
real process shows: exit codes, what reaches stdout/stderr, that a failed or interrupted run leaves nothing
behind and an existing dataset untouched, a read-only destination, and an unreadable image met in a
DataLoader worker process.
"""
import hashlib, io, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import honouring_permissions

FIX = Path(__file__).parent/'fixtures'
PREPARE = Path(sys.executable).parent/'sgre_prepare'
if not PREPARE.exists(): PREPARE = Path(shutil.which('sgre_prepare') or 'sgre_prepare')


def run(*args, cwd=None, prefix=(), timeout=120):
    return subprocess.run([*prefix, str(PREPARE), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*')) if p.is_file()}


def leftovers(folder: Path) -> list:
    "Temporary siblings that an atomic write would leave behind."
    return sorted(p.name for p in folder.iterdir() if p.name.startswith('.'))


def copy_raw(name: str, tmp_path: Path) -> Path:
    raw = tmp_path/f'{name}-raw'
    shutil.copytree(FIX/name/'raw', raw)
    return raw


def assert_error(res, *parts):
    "Exit status 2, one line on stderr starting with `sgre_prepare: error:` and containing `parts`, no traceback."
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('sgre_prepare: error: '), res.stderr
    assert 'Traceback' not in res.stderr
    for p in parts: assert p in lines[0], (p, lines[0])


@pytest.mark.parametrize('name', ['mscoco', 'voc2007', 'nuswide', 'vg500', 'openimages'])
def test_fixture(name, tmp_path):
    dest = tmp_path/'out'/name
    res = run('--data', name, '--root', FIX/name/'raw', '--dest', dest)
    assert res.returncode == 0, res.stderr
    exp = FIX/name/'expected'
    for f in ('label.txt', 'train.txt', 'test.txt'): assert (dest/f).read_bytes() == (exp/f).read_bytes(), f
    if name == 'voc2007':
        a, b = np.load(dest/'ignore.npy'), np.load(exp/'ignore.npy')
        assert a.dtype == b.dtype and a.shape == b.shape and (a == b).all()
    assert (dest/'root.txt').read_text() == f'{(FIX/name/"raw").resolve()}\n'
    n = [len((exp/f).read_text().splitlines()) for f in ('label.txt', 'train.txt', 'test.txt')]
    assert res.stdout.strip().splitlines()[-1].startswith(f'wrote {dest}: {n[0]} labels, {n[1]} training and {n[2]} test images')
    assert leftovers(dest.parent) == []


def test_digits_default_dest(tmp_path):
    res = run('--data', 'digits', '--n-train', 30, '--n-test', 10, '--size', 32, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dest = tmp_path/'data'/'digits'
    assert res.stdout.strip().splitlines()[-1] == \
        'wrote data/digits: 10 labels, 30 training and 10 test images, with the images and boxes.json inside it'
    assert (dest/'label.txt').read_text().split() == \
        ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine']
    assert len(list((dest/'images'/'train').glob('*.png'))) == 30 and not (dest/'root.txt').exists()
    boxes = json.loads((dest/'boxes.json').read_text())
    assert len(boxes) == 40 and all(len(b) == 5 for v in boxes.values() for b in v)


def test_csv(tmp_path):
    images = tmp_path/'imgs'
    images.mkdir()
    rows = ['fname,tags']
    tiny = io.BytesIO()
    Image.new('RGB', (2, 2)).save(tiny, 'PNG')   # every listed image is decoded: real images, not empty files
    for i in range(20):
        (images/f'{i}.jpg').write_bytes(tiny.getvalue())
        rows.append(f'{i}.jpg,{"cat dog" if i % 2 else "dog"}')
    (tmp_path/'pets.csv').write_text('\n'.join(rows) + '\n')
    res = run('--data', 'csv', '--csv', tmp_path/'pets.csv', '--images', images, '--label-col', 'tags', '--valid-pct', 0.25,
              '--seed', 1, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    dest = tmp_path/'data'/'pets'   # the default destination is named after the CSV file
    assert (dest/'label.txt').read_text() == 'cat\ndog\n'
    assert len((dest/'test.txt').read_text().splitlines()) == 5 and len((dest/'train.txt').read_text().splitlines()) == 15


def test_usage_errors(tmp_path):
    assert_error(run('--data', 'digits', '--root', tmp_path), '--root cannot be used with --data digits')
    assert_error(run('--data', 'vg500'), '--data vg500 needs --root')
    assert_error(run('--data', 'csv', '--csv', tmp_path/'x.csv'), '--data csv needs --csv FILE')
    res = run('--data', 'nope')
    assert res.returncode == 2 and "invalid choice: 'nope'" in res.stderr


@pytest.mark.parametrize('name, edit, parts', [
    ('mscoco', lambda r: (r/'annotations/instances_train2014.json').unlink(),
     ['expected the file annotations/instances_train2014.json under the dataset root', 'annotations_trainval2014.zip']),
    ('mscoco', lambda r: (r/'annotations/instances_val2014.json').write_text('{"images": [}'),
     ['annotations/instances_val2014.json line 1 column 13 is not valid JSON']),
    ('voc2007', lambda r: (r/'Annotations/000012.xml').write_text('<annotation><object></annotation>'),
     ['Annotations/000012.xml line 1 column 23 is not well-formed XML']),
    ('voc2007', lambda r: (r/'Annotations/000008.xml').write_text(
        '<annotation><object><name>unicorn</name><difficult>0</difficult></object></annotation>'),
     ['ImageSets/Main/test.txt line 4 (Annotations/000008.xml): the label `unicorn` is not in label.txt']),
    ('nuswide', lambda r: (r/'ImageList/TrainImagelist.txt').write_text(
        (r/'ImageList/TrainImagelist.txt').read_text() + 'actor\\0003_1067349411.jpg\n'),
     ['Groundtruth/TrainTestLabels/Labels_airport_Train.txt has 5 lines but ImageList/TrainImagelist.txt has 6']),
    ('vg500', lambda r: (r/'ssgrl_partition/train_list_500.txt').write_text('2368194.jpg\n107971.jpg\n2368194.jpg\n'),
     ['ssgrl_partition/train_list_500.txt line 3: the image VG_100K/2368194.jpg is listed again (first listed at',
      'line 1)']),
    ('vg500', lambda r: (r/'ssgrl_partition/vg_category_500_labels_index.json').write_text('{}'),
     ['no image of ssgrl_partition/train_list_500.txt has a category', 'the split would be empty']),
])
def test_bad_input_writes_nothing(name, edit, parts, tmp_path):
    raw = copy_raw(name, tmp_path)
    edit(raw)
    dest = tmp_path/'out'/name
    dest.parent.mkdir()
    assert_error(run('--data', name, '--root', raw, '--dest', dest), *parts)
    assert not dest.exists() and leftovers(dest.parent) == []


def test_debug_shows_traceback(tmp_path):
    res = run('--data', 'vg500', '--root', tmp_path/'missing', '--dest', tmp_path/'out', '--debug')
    assert res.returncode == 2 and 'Traceback' in res.stderr and 'sgre_prepare: error: the dataset root' in res.stderr


def test_failed_run_keeps_existing_dataset(tmp_path):
    dest = tmp_path/'voc'
    assert run('--data', 'voc2007', '--root', FIX/'voc2007'/'raw', '--dest', dest).returncode == 0
    before = digest(dest)
    raw = copy_raw('voc2007', tmp_path)
    (raw/'ImageSets/Main/test.txt').write_text('000001\n000001\n')
    assert_error(run('--data', 'voc2007', '--root', raw, '--dest', dest), 'is listed again')
    assert digest(dest) == before and leftovers(tmp_path) == []


def test_dest_holding_raw_data_is_refused(tmp_path):
    raw = copy_raw('vg500', tmp_path)
    before = digest(raw)
    assert_error(run('--data', 'vg500', '--root', raw, '--dest', raw), 'holds the raw data')
    assert_error(run('--data', 'vg500', '--root', raw, '--dest', tmp_path), 'holds the raw data')
    assert digest(raw) == before


def test_read_only_destination(tmp_path):
    parent = tmp_path/'ro'
    parent.mkdir()
    parent.chmod(0o555)
    try:
        prefix = honouring_permissions(parent)
        if prefix is None: pytest.skip('running as root without setpriv: permission bits cannot be tested')
        res = run('--data', 'digits', '--n-train', 5, '--n-test', 5, '--dest', parent/'digits', prefix=prefix)
        assert_error(res, f'the folder {parent} is not writable')
        assert list(parent.iterdir()) == []
    finally: parent.chmod(0o755)


def test_interrupt_leaves_nothing_partial(tmp_path):
    dest = tmp_path/'digits'
    assert run('--data', 'digits', '--n-train', 20, '--n-test', 5, '--dest', dest).returncode == 0
    before = digest(dest)
    proc = subprocess.Popen([str(PREPARE), '--data', 'digits', '--n-train', '200000', '--dest', str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:   # wait until the build is writing images
            partial = [p for p in tmp_path.iterdir() if p.name.startswith('.digits.partial')]
            if partial and len(list((partial[0]/'images'/'train').glob('*.png'))) > 50: break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        else: pytest.fail('the digits build did not start writing images')
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 130, err
    assert 'interrupted; nothing half-written was left behind' in err and 'Traceback' not in err
    assert leftovers(tmp_path) == [] and digest(dest) == before


def test_unreadable_image_in_worker(tmp_path):
    "An image that cannot be decoded in a DataLoader worker process is reported by path, in one paragraph."
    from sgre.core import SGREError
    from sgre.data import prepare_digits, sgre_dls
    dest = prepare_digits(tmp_path/'digits', n_train=16, n_test=8, size=32)
    bad = dest/'images'/'test'/'00005.png'
    bad.write_bytes(bad.read_bytes()[:100])
    dls = sgre_dls(dest, img_size=32, bs=4, num_workers=2, device='cpu')
    with pytest.raises(SGREError) as e: list(dls.valid)
    msg = str(e.value)
    assert msg.startswith(f'cannot read the image {bad.resolve()} (') and '\n' not in msg and 'Traceback' not in msg, msg


def test_digits_long_tail(tmp_path):
    "`--long-tail` gives class frequencies from 50 % down to 1 %; `--class-freq` any feasible ones."
    from sgre.data import _LONG_TAIL, _DIGITS
    n = 1500
    res = run('--data', 'digits', '--long-tail', '--n-train', n, '--n-test', 10, '--size', 24, '--dest', tmp_path/'tail')
    assert res.returncode == 0, res.stderr
    lines = (tmp_path/'tail'/'train.txt').read_text().splitlines()
    seen = np.array([[d in l.split('\t')[1].split(',') for d in _DIGITS] for l in lines]).mean(0)
    f = np.array(_LONG_TAIL)
    assert f[0] == 0.5 and f[-1] == 0.01
    assert (np.abs(seen - f) <= 4.5 * np.sqrt(f * (1 - f) / n)).all(), seen
    res = run('--data', 'digits', '--class-freq', ','.join(['0.999'] + ['0.01'] * 9), '--n-train', 50, '--n-test', 10,
              '--size', 24, '--dest', tmp_path/'zeros')
    assert res.returncode == 0, res.stderr
    lines = (tmp_path/'zeros'/'train.txt').read_text().splitlines()
    assert sum(l.split('\t')[1].split(',')[0] == 'zero' for l in lines) >= 45   # `zero` in (nearly) every image
    res = run('--data', 'digits', '--class-freq', '0.1,x', '--dest', tmp_path/'x')   # argparse's usage, then its error line
    assert res.returncode == 2 and "error: argument --class-freq: '0.1,x' is not a comma-separated list" in res.stderr, res.stderr
    assert not (tmp_path/'x').exists()


def test_unreadable_images(tmp_path):
    "Every listed image is decoded: all unreadable ones are listed and nothing is written; --skip-unreadable leaves them out."
    raw = copy_raw('vg500', tmp_path)
    cut = raw/'VG_100K'/'2415638.jpg'
    cut.write_bytes(cut.read_bytes()[:300])                      # truncated (train)
    (raw/'VG_100K_2'/'1592810.jpg').write_text('not an image')   # not an image (test)
    dest = tmp_path/'out'/'vg'
    dest.parent.mkdir()
    res = run('--data', 'vg500', '--root', raw, '--dest', dest)
    assert_error(res, '2 of the 8 listed images cannot be read, so nothing was written:',
                 'ssgrl_partition/train_list_500.txt line 3: VG_100K/2415638.jpg (OSError: ',
                 'ssgrl_partition/test_list_500.txt line 2: VG_100K_2/1592810.jpg (UnidentifiedImageError: cannot identify image file',
                 'pass --skip-unreadable')
    assert '<_io.' not in res.stderr   # PIL's file-object repr is not part of the message
    assert [l.split(':')[0] for l in res.stdout.splitlines() if l.startswith('cannot read ')] == \
        ['cannot read VG_100K/2415638.jpg', 'cannot read VG_100K_2/1592810.jpg']   # each printed as it is found
    assert not dest.exists() and leftovers(dest.parent) == []
    res = run('--data', 'vg500', '--root', raw, '--dest', dest, '--skip-unreadable')
    assert res.returncode == 0, res.stderr
    assert 'left out 2 of the 8 listed images (0 missing, 2 unreadable): 1 train, 1 test.' in res.stdout.splitlines()
    exp = FIX/'vg500'/'expected'
    for f, gone in (('train.txt', 'VG_100K/2415638.jpg'), ('test.txt', 'VG_100K_2/1592810.jpg')):
        assert (dest/f).read_text().splitlines() == [l for l in (exp/f).read_text().splitlines() if not l.startswith(gone)]
    assert res.stdout.strip().splitlines()[-1].startswith(f'wrote {dest}: 500 labels, 4 training and 2 test images')
    assert_error(run('--data', 'digits', '--skip-unreadable', '--dest', tmp_path/'d'), '--skip-unreadable cannot be used with --data digits')


def test_csv_neg_col(tmp_path):
    "`--neg-col` writes three-field lists (positives, verified negatives) that read back with their negatives."
    from sgre.data import read_prepared
    images = tmp_path/'photos'
    images.mkdir()
    tiny = io.BytesIO()
    Image.new('RGB', (2, 2)).save(tiny, 'PNG')
    rows = ['fname,labels,absent,test']
    for i, (pos, neg) in enumerate([('cat', 'car'), ('dog', ''), ('', 'cat dog'), ('', ''), ('dog', 'cat')]):
        (images/f'{i}.jpg').write_bytes(tiny.getvalue())
        rows.append(f'{i}.jpg,{pos},{neg},{int(i == 4)}')
    (tmp_path/'pets.csv').write_text('\n'.join(rows) + '\n')
    dest = tmp_path/'pets'
    res = run('--data', 'csv', '--csv', tmp_path/'pets.csv', '--images', images, '--neg-col', 'absent', '--valid-col', 'test',
              '--dest', dest)
    assert res.returncode == 0, res.stderr
    assert (dest/'label.txt').read_text() == 'car\ncat\ndog\n'
    assert (dest/'train.txt').read_bytes() == b'0.jpg\tcat\tcar\n1.jpg\tdog\t\n2.jpg\t\tcat,dog\n'   # 3.jpg: nothing known
    assert (dest/'test.txt').read_bytes() == b'4.jpg\tdog\tcat\n'
    d = read_prepared(dest)
    assert (d.train_neg, d.test_neg) == ([['car'], [], ['cat', 'dog']], [['cat']])
    (tmp_path/'pets.csv').write_text('\n'.join(rows[:2] + ['1.jpg,dog,dog,0'] + rows[3:]) + '\n')
    assert_error(run('--data', 'csv', '--csv', tmp_path/'pets.csv', '--images', images, '--neg-col', 'absent', '--valid-col', 'test',
                     '--dest', tmp_path/'never'), 'pets.csv line 3: the class `dog` is both a positive and a verified negative of 1.jpg')
    assert not (tmp_path/'never').exists()
