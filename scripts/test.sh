#!/usr/bin/env bash
# Run the whole test suite (lint included). DDS traffic stays on this machine: when root, the
# tests run in a private network namespace with only loopback up. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
export ROS_DOMAIN_ID="${CITYSEG_TEST_DOMAIN_ID:-87}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
cmd=(python -m pytest -q -p no:cacheprovider --durations=15 "$@")
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' _ "${cmd[@]}"
fi
exec "${cmd[@]}"
