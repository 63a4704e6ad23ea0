#!/usr/bin/env bash
# The test suite, from a fresh clone: installs what it needs, then runs every test, the slow
# end-to-end ones included. Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# with the cluster extra (Ray) too: tests/test_ray_cluster.py runs `fleet sim --ray` on a real
# two-node local cluster, and fails rather than skips without Ray here.
FLEET_EXTRAS=cluster "$root/scripts/bootstrap.sh"
export FLEET_REQUIRE_RAY=1
# LeRobot's own venv (lerobot pins an older torch than fleet's): tests/test_export.py reads the
# LeRobot export back with lerobot's LeRobotDataset, and fails rather than skips without it here.
"$root/scripts/lerobot-venv.sh"
export FLEET_REQUIRE_LEROBOT=1
source "$root/scripts/env.sh"
cd "$root"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure, not a pass." >&2
    exit 1
fi
exit "$rc"
