#!/usr/bin/env bash
# Create (or reuse) .venv-lerobot at the repo root: LeRobot's dataset API for
# `fleet export --format lerobot`, pinned in scripts/lerobot-requirements.txt (why a venv of its
# own: that file's header). Re-installs only when the requirements or this script changed.
# scripts/test.sh runs it so that CI round-trips the LeRobot export; the main job does not need it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
venv=.venv-lerobot
if [ ! -x "$venv/bin/python" ]; then
    echo "[lerobot-venv] creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
stamp="$venv/.fleet-install-stamp"
want="$(cat scripts/lerobot-requirements.txt scripts/lerobot-venv.sh | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[lerobot-venv] installing lerobot and its torch into $venv" \
         "(about 4 GB to download and 2 minutes to install the first time)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r scripts/lerobot-requirements.txt
    echo "$want" > "$stamp"
fi
