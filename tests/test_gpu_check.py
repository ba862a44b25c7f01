"""benchmarks/gpu_check.py on a machine without a GPU: the plain command says so in one line and writes
nothing; `--cpu-smoke` runs every section's code on the CPU at tiny sizes and writes the expected rows, a verdict
per section and the card; the sections' time caps fit the default budget, as the docstring states them."""
import csv, importlib.util, os, re, subprocess, sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_check.py'
SECTIONS = ['precision', 'head', 'learner', 'loader', 'resume', 'accum', 'compile', 'ddp']
HEAD_ROWS = [('head', f'C={C}, {impl}, {prec}') for prec in ('bf16', 'fp16', 'fp32') for C in (4, 12)
             for impl in ('fused', 'blocked', 'naive')]
SMOKE_ROWS = [
    *[('precision', f'{d}, {impl}') for d in ('float32', 'autocast float16', 'autocast bfloat16') for impl in ('naive', 'fused', 'blocked')],
    *HEAD_ROWS,
    ('learner', 'bare model step (bf16, batch 2, C=6)'),
    ('learner', 'sgre_learner step (bf16, batch 2, C=6: EMA, callbacks, recorder)'),
    ('learner', 'bare model step again'),
    ('loader', 'train() --amp bf16, default workers, 64 px, batch 4'), ('loader', 'the loader alone (same loaders)'),
    ('loader', 'the model step alone (bf16, batch 4)'),
    ('resume', 'one epoch, then resume and one step'),
    ('accum', '--accum-steps 2 (4 + 4) vs batches of 8, 2 steps'),
    ('compile', 'eager (bf16, batch 2, C=6)'), ('compile', 'torch.compile (aot_eager): graphs'),
    ('compile', 'torch.compile (aot_eager): speed'),
    ('ddp', 'accelerate launch --num_processes 1, gloo (CPU), 4 steps'),
]


def _run(cwd, *args, timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _module():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_caps_fit_the_budget():
    g = _module()
    assert list(g.CAPS) == list(g.SMOKE_CAPS) == g.SECTIONS == SECTIONS
    assert sum(g.CAPS.values()) < g.BUDGET <= 8 * 60, (sum(g.CAPS.values()), g.BUDGET)
    # the docstring states the caps and the budget the code uses
    stated = re.search(r'^ +(precision \d+(?:, \w+ \d+)*)$', g.__doc__, re.M).group(1)
    assert dict((k, int(v)) for k, v in (c.split() for c in stated.split(', '))) == g.CAPS, stated
    assert f'add up to {sum(g.CAPS.values())}' in ' '.join(g.__doc__.split()) and f'--budget` of {g.BUDGET:.0f}' in g.__doc__
    # what the driver expects of a finished section is what the smoke run below finds
    assert [g.expected_rows(s, True) for s in SECTIONS] == [sum(k == s for k, _ in SMOKE_ROWS) for s in SECTIONS]


@pytest.mark.skipif(torch.cuda.is_available(), reason='with a GPU the command runs the real check')
def test_no_gpu_one_line(tmp_path):
    res = _run(tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('No CUDA GPU here'), res.stdout
    assert not list(tmp_path.iterdir())                      # no CSV, nothing else


def test_bad_budget(tmp_path):
    res = _run(tmp_path, '--budget', '0', '--cpu-smoke', timeout=120)
    assert res.returncode == 2 and 'error: --budget 0 is out of range' in res.stderr, (res.returncode, res.stderr[-2000:])
    assert not list(tmp_path.iterdir())


def test_cpu_smoke(tmp_path):
    res = _run(tmp_path, '--cpu-smoke', '--out', 'smoke.csv')
    assert res.returncode == 0, res.stderr[-3000:]
    with open(tmp_path / 'smoke.csv', newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    card, rows = rows[0], rows[1:]
    assert card['section'] == 'card' and card['case'].startswith('CPU smoke run') and 'torch ' + torch.__version__ in card['result'], card
    table = [r for r in rows if r['case'] != 'verdict']
    assert [(r['section'], r['case']) for r in table] == SMOKE_ROWS, [(r['section'], r['case']) for r in table]
    failed = [r for r in rows if r['status'].startswith(('FAILED', 'PARTIAL'))]
    assert not failed, failed
    by = {(r['section'], r['case']): r for r in table}
    # every head x precision x C ran at the largest batch the (simulated) memory allows, 2: bf16's fused search found 4
    # out of memory, and the searches after it started at 2
    for key in HEAD_ROWS:
        assert by[key]['status'] == 'ok' and by[key]['result'].startswith('batch 2, images/s '), by[key]
        assert ('tried 4 out of memory (simulated)' in by[key]['result']) == key[1].endswith('fused, bf16'), by[key]
    assert by['resume', 'one epoch, then resume and one step']['status'] == 'ok'
    assert 'on another device or dtype 0' in by['resume', 'one epoch, then resume and one step']['result']
    assert by['accum', '--accum-steps 2 (4 + 4) vs batches of 8, 2 steps']['status'] == 'ok'
    assert 'graph breaks 0' in by['compile', 'torch.compile (aot_eager): graphs']['result']
    ddp = by[SMOKE_ROWS[-1]]
    assert 'backend gloo' in ddp['result'] and 'model in DDP True' in ddp['result'], ddp
    # one verdict per section, right after the section's rows
    verdicts = [r for r in rows if r['case'] == 'verdict']
    assert [r['section'] for r in verdicts] == SECTIONS and all(r['result'] for r in verdicts), verdicts
    assert [r['section'] for r in rows] == [s for s in SECTIONS for _ in range(sum(k == s for k, _ in SMOKE_ROWS) + 1)]
    assert 'matches steps of twice the batch' in verdicts[SECTIONS.index('accum')]['result']
    # the printed table: the card, one line per row, then the verdicts
    out = res.stdout
    assert out.startswith('## sgre GPU check: CPU smoke run') and 'torch ' + torch.__version__ in out, out[:500]
    assert out.count('\n| ') == len(SMOKE_ROWS) + 1, out   # the column names and the rows
    assert 'Verdicts:' in out and [l[2:].split(':')[0] for l in out.splitlines() if l.startswith('- ')] == SECTIONS, out
