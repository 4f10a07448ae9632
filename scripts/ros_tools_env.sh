#!/usr/bin/env bash
# OPTIONAL, for machines without a ROS 2 distro: build a scratch venv (outside the repo) with the
# real ROS 2 Jazzy command-line tools, from their upstream jazzy sources, so that
# `ros2 launch cityseg_ros segment.launch.py`, `ros2 run`, `ros2 pkg`, `ros2 lifecycle` and
# `ros2 param` can be tried against this checkout. Neither setup.sh nor CI needs it; the
# real-launch tests in test/test_launch.py use it when CITYSEG_ROS_TOOLS_ENV points at it.
#
#   ./scripts/setup.sh                         # .venv with cityseg_ros registered in the ament index
#   ./scripts/ros_tools_env.sh [DEST]          # default DEST: ../scratch/launchenv (beside the repo)
#   . DEST/activate_ros_tools                  # ros2 on PATH, AMENT_PREFIX_PATH=DEST:.venv
#   ros2 pkg prefix cityseg_ros && ros2 launch cityseg_ros segment.launch.py
#   CITYSEG_ROS_TOOLS_ENV=DEST ./scripts/test.sh test/test_launch.py
#
# Sources (never copied into the repo): $ROS2_SOURCES (default /work/.mirror) holds either bare
# mirrors ros2+NAME/repo or checkouts NAME (git clone -b jazzy https://github.com/ros2/NAME) of
# launch, launch_ros, ros2cli and rosidl_runtime_py; branch $ROS2_BRANCH (default jazzy). The
# Python dependencies come from PyPI (the Jazzy ros-jazzy-* wheels for rclpy and messages).
# composition_interfaces has no wheel; a placeholder module lets launch_ros import (composable
# node containers do not work in this venv; segment.launch.py does not use them).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dest="$(mkdir -p "${1:-$repo/../scratch/launchenv}" && cd "${1:-$repo/../scratch/launchenv}" && pwd)"
sources="${ROS2_SOURCES:-/work/.mirror}"
branch="${ROS2_BRANCH:-jazzy}"
PY=${PYTHON:-python3.11}
case "$dest/" in "$repo"/*) echo "ros_tools_env.sh: DEST must be outside the repo" >&2; exit 2;; esac

# Copy the jazzy tree of one upstream repository to $dest/src/NAME.
checkout() {
  local name=$1 out="$dest/src/$1"
  rm -rf "$out" && mkdir -p "$out"
  if [ -d "$sources/ros2+$name/repo" ]; then
    git --git-dir="$sources/ros2+$name/repo" archive "$branch" | tar -x -C "$out"
  elif [ -d "$sources/$name/.git" ]; then
    git -C "$sources/$name" archive "$branch" | tar -x -C "$out"
  else
    echo "ros_tools_env.sh: no source for $name in $sources; clone it with" \
      "git clone -b $branch https://github.com/ros2/$name $sources/$name" >&2
    exit 2
  fi
}
for name in launch launch_ros ros2cli rosidl_runtime_py; do checkout "$name"; done

[ -x "$dest/bin/python" ] || "$PY" -m venv "$dest"
pip=("$dest/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip
"${pip[@]}" ros-jazzy-rclpy ros-jazzy-rmw-fastrtps-cpp ros-jazzy-lifecycle-msgs \
  ros-jazzy-rcl-interfaces ros-jazzy-std-msgs ros-jazzy-sensor-msgs ros-jazzy-rosidl-parser \
  ros-jazzy-ament-index-python osrf-pycommon lark pyyaml importlib-metadata catkin-pkg empy \
  argcomplete packaging psutil numpy setuptools wheel 'pytest<9'
# Upstream Python packages, non-editable (their data_files, e.g. launch's grammar, must land).
"${pip[@]}" --no-deps --no-build-isolation \
  "$dest/src/launch/launch" "$dest/src/launch/launch_xml" "$dest/src/launch/launch_yaml" \
  "$dest/src/launch/launch_testing" "$dest/src/launch_ros/launch_ros" \
  "$dest/src/launch_ros/ros2launch" "$dest/src/rosidl_runtime_py" \
  "$dest/src/ros2cli/ros2cli" "$dest/src/ros2cli/ros2pkg" "$dest/src/ros2cli/ros2run" \
  "$dest/src/ros2cli/ros2node" "$dest/src/ros2cli/ros2service" "$dest/src/ros2cli/ros2topic" \
  "$dest/src/ros2cli/ros2param" "$dest/src/ros2cli/ros2lifecycle"

site="$("$dest/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$dest/bin/python" -c 'import composition_interfaces' 2>/dev/null; then
  mkdir -p "$site/composition_interfaces"
  echo '"""Placeholder: no Jazzy wheel exists; only lets launch_ros import."""' \
    > "$site/composition_interfaces/__init__.py"
  cat > "$site/composition_interfaces/srv.py" <<'EOF'
"""Placeholder services: composable node containers are not available in this venv."""


class _Unavailable:
    def __init__(self, *args, **kwargs):
        raise RuntimeError('composition_interfaces is a placeholder in this scratch venv')


class LoadNode(_Unavailable):
    Request = Response = _Unavailable


class UnloadNode(LoadNode):
    pass


class ListNodes(LoadNode):
    pass
EOF
fi

cat > "$dest/activate_ros_tools" <<EOF
# Source me: the ROS 2 tools of this scratch venv, pointed at cityseg_ros in $repo/.venv.
. "$dest/bin/activate"
export AMENT_PREFIX_PATH="$dest:$repo/.venv"
export ROS_AUTOMATIC_DISCOVERY_RANGE="\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export FASTDDS_BUILTIN_TRANSPORTS="\${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}"
export FASTRTPS_DEFAULT_PROFILES_FILE="\${FASTRTPS_DEFAULT_PROFILES_FILE:-$repo/config/fastdds_large_images.xml}"
EOF
echo "ROS 2 tools in $dest: source $dest/activate_ros_tools, or set CITYSEG_ROS_TOOLS_ENV=$dest"
