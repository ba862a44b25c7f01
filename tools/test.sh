#!/usr/bin/env bash
# The project's test command, from a clone after `pip install -e ".[dev]"`: the notebooks (nbdev_test), then tests/ (pytest).
#
#     tools/test.sh                  # everything
#     tools/test.sh -k serve         # arguments go to pytest
#
# The browser checks (the docs site, the service's page, the evaluation report) run in Debian's Chromium at
# /usr/bin/chromium. When it is missing, this script installs it with apt if it may (as root, or with sudo that needs no
# password); otherwise it stops and says so. SGRE_SKIP_BROWSER=1 skips the browser checks instead.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   # nothing may reach for a model hub

if [ "${SGRE_SKIP_BROWSER:-0}" != 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"
  else
    echo "tools/test.sh: the browser tests need Chromium at /usr/bin/chromium, and installing it (apt-get install chromium)" \
         "needs root or sudo. Install it, or run SGRE_SKIP_BROWSER=1 tools/test.sh to skip those checks." >&2
    exit 2
  fi
  $sudo apt-get update -q && $sudo apt-get install -y -q chromium
fi

# one thread per notebook process: nbdev_test runs one per core, and they would fight over the cores otherwise
OMP_NUM_THREADS=1 nbdev_test --timing
pytest tests --durations=20 "$@"   # the 20 slowest tests, to see where the time goes
