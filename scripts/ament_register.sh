#!/usr/bin/env bash
# Make a pip-installed cityseg_ros visible to the ROS 2 tools (ros2 pkg/run/launch find packages
# through the ament index under AMENT_PREFIX_PATH, which pip knows nothing about). Writes, under
# PREFIX (default: the active venv):
#   share/ament_index/resource_index/packages/cityseg_ros    the index marker
#   share/cityseg_ros/{package.xml,launch/*,config/*,rviz/*} symlinks into this checkout
#   lib/cityseg_ros/<console script>                         wrappers that run it with the
#                                                            active venv's python
# Symlinks keep an editable install editable: an edited launch file or YAML needs no re-run (a
# new file or console script does: run scripts/setup.sh again). colcon build does the same job
# in a ROS workspace. Usage: scripts/ament_register.sh [PREFIX], with the venv active.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${1:-${VIRTUAL_ENV:-}}"
if [ -z "$prefix" ]; then
  echo "ament_register.sh: activate the venv (source scripts/env.sh) or pass a prefix" >&2
  exit 2
fi
package=cityseg_ros
# The venv's prefix, site-packages and scripts folder, then the distribution's console scripts.
mapfile -t found < <(python - <<'EOF'
import sys
import sysconfig
from importlib.metadata import distribution
print(sys.prefix)
print(sysconfig.get_path('purelib'))
print(sysconfig.get_path('scripts'))
for ep in distribution('cityseg_ros').entry_points:
    if ep.group == 'console_scripts':
        print(ep.name)
EOF
)
if [ "${#found[@]}" -lt 4 ]; then
  echo "ament_register.sh: cityseg_ros is not installed in $(command -v python);" \
    "run pip install -e . first" >&2
  exit 2
fi
venv="${found[0]}" site="${found[1]}" bindir="${found[2]}"

index="$prefix/share/ament_index/resource_index/packages"
share="$prefix/share/$package"
lib="$prefix/lib/$package"
mkdir -p "$index"
cp "$repo/resource/$package" "$index/$package"
rm -rf "$share" "$lib"
mkdir -p "$share" "$lib"
# File by file: ros2 launch finds launch files with os.walk, which skips linked folders.
ln -s "$repo/package.xml" "$share/package.xml"
for folder in launch config rviz; do
  mkdir -p "$share/$folder"
  for file in "$repo/$folder"/*; do
    if [ -f "$file" ]; then ln -s "$file" "$share/$folder/"; fi
  done
done
# The ROS wheels find their shared libraries through LD_LIBRARY_PATH, set once per process tree
# (ros_wheels_bootstrapper re-executes python unless _ROS_WHEELS_BOOTSTRAP_COMPLETE is set). A
# ros2 from another venv has set it for its own libraries, so the wrapper puts ours first.
# The process also asks Linux for a SIGINT when its parent dies (PR_SET_PDEATHSIG = 1): ros2
# launch killed by SIGTERM or SIGKILL (e.g. by `timeout`) exits without stopping its children.
for name in "${found[@]:3}"; do
  if [ ! -x "$bindir/$name" ]; then
    echo "ament_register.sh: console script $bindir/$name is missing; run pip install -e ." >&2
    exit 2
  fi
  cat > "$lib/$name" <<EOF
#!/bin/sh
# $name of cityseg_ros for ros2 run / ros2 launch (written by scripts/ament_register.sh).
libs='$venv/lib'
for dir in '$site'/ros_*.libs; do
  if [ -d "\$dir" ]; then libs="\$libs:\$dir"; fi
done
export LD_LIBRARY_PATH="\$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1
exec '$venv/bin/python' -S -c '
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGINT)
except AttributeError:  # not Linux
    pass
if os.getppid() == int(sys.argv[1]):  # else the parent is already gone
    os.execv(sys.argv[2], sys.argv[2:])
' "\$PPID" '$bindir/$name' "\$@"
EOF
  chmod +x "$lib/$name"
done
