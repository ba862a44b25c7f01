"""tools/check_outputs.py: each kind of build noise in notebook outputs or README.md is caught, a clean tree passes.

Each test writes a small synthetic tree (nbs/*.ipynb, README.md) in tmp_path and checks it with `--root`.
"""
import json, subprocess, sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / 'tools'
sys.path.insert(0, str(TOOLS))
import check_outputs  # noqa: E402

CLEAN_README = '# demo\n\n```python\nprint(1)\n```\n\n    1\n\n```\n\n```sh\npip install sgre\n```\n'


def stream(text, name='stdout'): return {'output_type': 'stream', 'name': name, 'text': [text]}
def data(mime, text): return {'output_type': 'display_data', 'metadata': {}, 'data': {mime: text}}
PNG = data('image/png', 'iVBORw0KGgo/work/site-packages+base64==')   # base64 is never read as text


def tree(tmp_path, outputs=(), readme=CLEAN_README, name='00_core.ipynb') -> Path:
    "A repository with one notebook (one code cell after a markdown cell, holding `outputs`) and README.md."
    cells = [{'cell_type': 'markdown', 'metadata': {}, 'source': ['# Core']},
             {'cell_type': 'code', 'metadata': {}, 'execution_count': None, 'source': ['x'], 'outputs': list(outputs)}]
    nb = tmp_path / 'nbs' / name
    nb.parent.mkdir(parents=True, exist_ok=True)
    nb.write_text(json.dumps({'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))
    (tmp_path / 'README.md').write_text(readme)
    return tmp_path


def offences(root): return check_outputs.check(root)[0]


def test_clean_tree_passes(tmp_path):
    root = tree(tmp_path, [stream('epoch 1: loss 0.5\n'), data('text/plain', "'experiments/mlic_digits/exp1'"),
                           data('text/html', '<a href="https://example.org/home/">home</a>'), PNG])
    offs, summary = check_outputs.check(root)
    assert offs == [] and summary.startswith('1 notebooks (4 outputs)')
    r = subprocess.run([sys.executable, str(TOOLS / 'check_outputs.py'), '--root', str(root)], capture_output=True, text=True)
    assert r.returncode == 0 and 'OK' in r.stdout, r.stdout + r.stderr


def test_stderr_output(tmp_path):
    assert offences(tree(tmp_path, [stream('some warning\n', name='stderr')])) == [
        "nbs/00_core.ipynb cell 1: stderr output: 'some warning'"]


def test_error_output(tmp_path):
    err = {'output_type': 'error', 'ename': 'ValueError', 'evalue': 'bad', 'traceback': ['Traceback', 'ValueError: bad']}
    assert offences(tree(tmp_path, [err])) == ["nbs/00_core.ipynb cell 1: error output: 'ValueError: bad'"]


@pytest.mark.parametrize('out', [
    stream('/work/main/.venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found\n', 'stderr'),
    stream('weights in /tmp/tmpab12cd/exp1/best.pth\n'),
    data('text/plain', "PosixPath('/root/data/digits')"),
    data('text/html', '<pre>/home/me/sgre/nbs</pre>'),
    data('text/markdown', 'see `.venv/lib/python3.11/foo.py`'),
    data('text/plain', '/usr/lib/python3/dist-packages/numpy/core.py'),
    {'output_type': 'error', 'ename': 'KeyError', 'evalue': "'x'", 'traceback': ['File \x1b[0;32m/tmp/ipykernel_42/1.py:3']},
])
def test_machine_paths(tmp_path, out):
    offs = offences(tree(tmp_path, [out]))
    assert len(offs) == 1 and offs[0].startswith('nbs/00_core.ipynb cell 1: ') and 'naming a machine path' in offs[0], offs


def test_empty_code_block_in_readme(tmp_path):
    readme = '# demo\n\n```python\n\n```\n\ntext\n\n```python\n   \n\n```\n\n```python\nx = 1\n```\n'
    assert offences(tree(tmp_path, readme=readme)) == ['README.md line 3: empty code block', 'README.md line 9: empty code block']


def test_machine_path_in_readme(tmp_path):
    assert offences(tree(tmp_path, readme=CLEAN_README + '\n    /work/main/README_files\n')) == [
        "README.md line 15: names a machine path (/work/): '/work/main/README_files'"]


def test_notebooks_found_as_the_docs_build_finds_them(tmp_path):
    "Notebooks in sub-folders count; those in `_`/`.` folders and data/experiments folders do not."
    noisy = [stream('warning\n', 'stderr')]
    for sub in ('_tmp', '.ipynb_checkpoints', 'data', 'experiments/run1'):
        tree(tmp_path, noisy, name=f'{sub}/x.ipynb')
    tree(tmp_path, noisy, name='guides/y.ipynb')
    assert [o.split(':')[0] for o in offences(tmp_path)] == ['nbs/guides/y.ipynb cell 1']


def test_fails_with_a_list(tmp_path):
    root = tree(tmp_path, [stream('warning\n', 'stderr')], readme='```python\n```\n')
    r = subprocess.run([sys.executable, str(TOOLS / 'check_outputs.py'), '--root', str(root)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stdout.splitlines() == ["nbs/00_core.ipynb cell 1: stderr output: 'warning'", 'README.md line 1: empty code block']
    assert '2 problem(s)' in r.stderr
