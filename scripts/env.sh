# Source me: activates .venv and points ROS 2 (PyPI Jazzy wheels) at it, traffic on localhost only.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_here/.venv/bin/activate"
# setup.sh registers cityseg_ros in the venv's ament index (scripts/ament_register.sh).
case ":${AMENT_PREFIX_PATH:-}:" in
  *":$VIRTUAL_ENV:"*) ;;
  *) export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" ;;
esac
# Jazzy's discovery setting; ROS_LOCALHOST_ONLY is deprecated there (rcl warns twice per process).
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
# Large images between processes: shared memory / TCP instead of fragmented UDP, and a shared
# memory segment that holds whole 2-megapixel frames, without which a best-effort publisher
# loses nearly all of them (config/fastdds_large_images.xml says why; it wins over LARGE_DATA).
export FASTDDS_BUILTIN_TRANSPORTS="${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
export FASTRTPS_DEFAULT_PROFILES_FILE="${FASTRTPS_DEFAULT_PROFILES_FILE:-$_here/config/fastdds_large_images.xml}"
unset _here
