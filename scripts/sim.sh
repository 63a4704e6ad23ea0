#!/usr/bin/env bash
# The main job, from a fresh clone: installs what it needs, then starts a simulated fleet.
# Extra arguments go to `fleet sim` (e.g. `scripts/sim.sh --arms 2`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
source "$root/scripts/env.sh"
cd "$root"
exec .venv/bin/fleet sim "$@"
