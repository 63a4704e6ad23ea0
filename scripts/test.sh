#!/usr/bin/env bash
# The test suite, from a fresh clone: installs what it needs, then runs every test, the slow
# end-to-end ones included. Extra arguments go to pytest (e.g. `scripts/test.sh -m "not slow"`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/bootstrap.sh"
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
