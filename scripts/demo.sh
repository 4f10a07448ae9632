#!/usr/bin/env bash
# The main job: set up .venv, then run the demo (see README "The main job"). Extra args go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
exec python -m cityseg_ros.ros.demo "$@"
