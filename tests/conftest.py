"Helpers shared by the test modules (pytest puts this folder on sys.path, so `from conftest import ...` works)."
import os, shutil, subprocess, sys
from pathlib import Path


def honouring_permissions(folder: Path):
    "A command prefix under which `folder`'s permission bits apply (root ignores them), or None if there is none."
    check = [sys.executable, '-c', f'import os; print(os.access({str(folder)!r}, os.W_OK))']
    prefixes = [()] if os.geteuid() != 0 else []
    if shutil.which('setpriv'): prefixes.append((shutil.which('setpriv'), '--bounding-set=-all', '--inh-caps=-all'))
    for prefix in prefixes:
        probe = subprocess.run([*prefix, *check], capture_output=True, text=True)
        if probe.stdout.strip() == 'False': return prefix
    return None
