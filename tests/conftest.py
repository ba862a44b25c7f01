"Helpers shared by the test modules (pytest puts this folder on sys.path, so `from conftest import ...` works)."
import os, shutil, subprocess, sys
from pathlib import Path

# the environment of every command a test runs: nothing may reach for a model hub
ENV = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', PYTHONUNBUFFERED='1')
# Debian's Chromium, headless, with nothing of its own that reaches the network (the browser tests block the rest)
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run',
                 '--disable-component-update', '--disable-sync', '--disable-quic', '--disable-dev-shm-usage',
                 '--disable-default-apps', '--disable-extensions']


def ok(res: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    "`res`, after asserting that its command succeeded (the failure shows the ends of its output)."
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def honouring_permissions(folder: Path):
    "A command prefix under which `folder`'s permission bits apply (root ignores them), or None if there is none."
    check = [sys.executable, '-c', f'import os; print(os.access({str(folder)!r}, os.W_OK))']
    prefixes = [()] if os.geteuid() != 0 else []
    if shutil.which('setpriv'): prefixes.append((shutil.which('setpriv'), '--bounding-set=-all', '--inh-caps=-all'))
    for prefix in prefixes:
        probe = subprocess.run([*prefix, *check], capture_output=True, text=True)
        if probe.stdout.strip() == 'False': return prefix
    return None
