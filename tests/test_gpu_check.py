"""benchmarks/gpu_check.py on a machine without a GPU: the plain command says so in one line and writes
nothing; `--cpu-smoke` runs every section's code on the CPU at tiny sizes and writes the expected rows."""
import csv, os, subprocess, sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'gpu_check.py'

SMOKE_ROWS = [
    ('precision', 'float32, naive'), ('precision', 'float32, fused'),
    ('precision', 'autocast float16, naive'), ('precision', 'autocast float16, fused'),
    ('precision', 'autocast bfloat16, naive'), ('precision', 'autocast bfloat16, fused'),
    ('train', 'naive head'), ('train', 'fused head'), ('train', 'fused + AMP (float16, GradScaler)'),
    ('compile', 'fused + AMP + torch.compile (aot_eager)'),
    ('ddp', 'accelerate launch --num_processes 1, gloo (CPU), 4 steps'),
    ('data', '2 workers, 64 px, batch 8'),
]


def _run(cwd, *args):
    env = dict(os.environ, HF_HUB_OFFLINE='1', PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason='with a GPU the command runs the real check')
def test_no_gpu_one_line(tmp_path):
    res = _run(tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('No CUDA GPU here'), res.stdout
    assert not list(tmp_path.iterdir())                      # no CSV, nothing else


def test_cpu_smoke(tmp_path):
    res = _run(tmp_path, '--cpu-smoke', '--out', 'smoke.csv')
    assert res.returncode == 0, res.stderr[-3000:]
    with open(tmp_path / 'smoke.csv', newline='', encoding='utf-8') as f: rows = list(csv.DictReader(f))
    assert [(r['section'], r['case']) for r in rows] == SMOKE_ROWS, rows
    failed = [r for r in rows if r['status'].startswith('FAILED')]
    assert not failed, failed
    ddp = rows[SMOKE_ROWS.index(SMOKE_ROWS[-2])]
    assert 'backend gloo' in ddp['result'] and 'model in DDP True' in ddp['result'], ddp
    # the printed table: a header naming the run, then one line per row
    out = res.stdout
    assert out.startswith('## sgre GPU check: CPU smoke run') and 'torch ' + torch.__version__ in out, out[:500]
    assert out.count('\n| ') == len(SMOKE_ROWS) + 1, out   # the column names and the rows
