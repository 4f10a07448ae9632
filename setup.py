# Copyright 2026 The cityseg_ros Authors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""ament_python package that also installs with plain pip (``pip install -e .[ros,test]``)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'cityseg_ros'

# The one list of pip requirements. torch is left unpinned here so a CUDA machine keeps its
# own build; scripts/setup.sh installs the CPU build 2.13.0 first on a machine without a GPU.
REQUIRES = [
    'numpy>=1.24',
    'opencv-python-headless>=4.8',
    'torch>=2.2',
    'rosbags>=0.10',
    'rosbags-image>=0.9',
    'tqdm>=4.60',
    'pyyaml>=6',
    'matplotlib>=3.7',
]
EXTRAS = {
    # ROS 2 Jazzy from PyPI wheels, for machines without a ROS distro (never the un-prefixed
    # ros-* names: they pull Kilted).
    'ros': [
        'ros-jazzy-rclpy', 'ros-jazzy-sensor-msgs', 'ros-jazzy-std-msgs',
        'ros-jazzy-stereo-msgs', 'ros-jazzy-diagnostic-msgs', 'ros-jazzy-rmw-fastrtps-cpp',
    ],
    # flake8 with the plugins ament_flake8 runs, so `pytest` lints like `colcon test`.
    'test': [
        'pytest>=7', 'cityscapesscripts==2.3.0', 'pydocstyle>=6', 'flake8>=6',
        'flake8-builtins', 'flake8-comprehensions', 'flake8-docstrings',
        'flake8-import-order', 'flake8-quotes',
    ],
    # Optional inference backends (cityseg_ros.backends): onnx + onnxscript for torch's dynamo
    # exporter (export_model), onnxruntime for the graph. On a GPU machine install
    # onnxruntime-gpu instead of onnxruntime (both provide the onnxruntime module).
    'onnx': ['onnx>=1.16', 'onnxruntime>=1.18', 'onnxscript>=0.5'],
    'openvino': ['onnx>=1.16', 'onnxscript>=0.5', 'openvino>=2024.4'],
    'tensorrt': ['onnx>=1.16', 'onnxscript>=0.5', 'tensorrt>=10.0'],
}
SCRIPTS = ['segment_node=cityseg_ros.ros.node:main'] + [
    f'{tool}=cityseg_ros.tools.{tool}:main'
    for tool in ('segment_images', 'make_bag', 'evaluate', 'fetch_weights', 'benchmark', 'train',
                 'export_model')
]

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.xml')),
        ('share/' + PACKAGE + '/rviz', glob('rviz/*.rviz')),
    ],
    python_requires='>=3.10',
    install_requires=REQUIRES,
    extras_require=EXTRAS,
    zip_safe=True,
    maintainer='cityseg_ros maintainers',
    maintainer_email='cityseg-ros@example.com',
    description='Cityscapes semantic segmentation node, evaluator and model zoo for ROS 2.',
    license='Apache-2.0',
    entry_points={'console_scripts': SCRIPTS},
)
