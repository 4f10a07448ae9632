# Source me: activates .venv and points ROS 2 (PyPI Jazzy wheels) at it, traffic on localhost only.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_here/.venv/bin/activate"
export AMENT_PREFIX_PATH="${AMENT_PREFIX_PATH:-$VIRTUAL_ENV}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_LOCALHOST_ONLY="${ROS_LOCALHOST_ONLY:-1}"
# Large images between processes: shared memory / TCP instead of fragmented UDP.
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
unset _here
