#!/usr/bin/env bash
# Create .venv and install cityseg_ros with its ROS 2 Jazzy wheels and test tools.
# Idempotent: a second run only checks what is installed. Usage: source scripts/env.sh afterwards.
# Also registers the package in the venv's ament index (share/, lib/cityseg_ros/), so that with
# AMENT_PREFIX_PATH=.venv the ROS 2 tools find it: ros2 pkg prefix / run / launch cityseg_ros.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch 2.13.0 first: with no torch installed an unpinned 'torch' pulls a
# multi-GB CUDA build. On a GPU machine, install your CUDA torch before running this script.
python -c 'import torch' 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[ros,test,onnx,openvino]'
./scripts/ament_register.sh "$VIRTUAL_ENV"
