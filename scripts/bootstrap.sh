#!/usr/bin/env bash
# Create (or reuse) .venv at the repo root and install fleet with everything it needs:
# ROS 2 Kilted wheels, torch==2.13.0 (CPU build), PyBullet, OpenCV, pyzmq, test tools.
# Re-installs only when pyproject.toml or this script changed since the last install.
# FLEET_EXTRAS=cluster (comma-separated extras of pyproject.toml) adds optional extras on top,
# with a stamp of their own, so that the main job's install stays as it is without them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
    echo "fleet needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1)." >&2
    echo "Set PYTHON=/path/to/python3.11 and run again." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "[bootstrap] creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi
stamp=.venv/.fleet-install-stamp
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[bootstrap] installing fleet and its dependencies into .venv (about 2 minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch is pinned in pyproject.toml; an unpinned torch would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet -e ".[ros,sim,dev,export]"
    echo "$want" > "$stamp"
fi
if [ -n "${FLEET_EXTRAS:-}" ]; then
    extras_stamp=".venv/.fleet-extras-stamp-${FLEET_EXTRAS//,/-}"
    if [ "$(cat "$extras_stamp" 2>/dev/null)" != "$want" ]; then
        echo "[bootstrap] installing the extras $FLEET_EXTRAS into .venv"
        .venv/bin/python -m pip install --quiet -e ".[ros,sim,dev,export,$FLEET_EXTRAS]"
        echo "$want" > "$extras_stamp"
    fi
fi
# The dashboard's browser test (tests/test_dashboard_browser.py) drives Debian's chromium through
# Playwright's Python driver (never `playwright install`). Installed only if missing, and only
# when this runs as root with apt-get; otherwise the test skips and says why.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[bootstrap] installing chromium + chromium-driver with apt-get (for the dashboard's browser test)"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
    else
        echo "[bootstrap] /usr/bin/chromium is missing and this is not root with apt-get:" \
             "the dashboard's browser test will skip (install chromium to run it)"
    fi
fi
