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

"""The cameras benchmark table: rows from the player's JSON, without running a node."""

import subprocess
import sys

from cityseg_ros.bench import cameras_table


def test_rows_show_rates_fairness_latency_and_drops_in_the_window():
    result = {'seconds': 10.0, 'received': {'front': 20, 'rear': 18},
              'latency_p50_ms': 812.4, 'latency_p95_ms': 1500.0,
              'diagnostics': {'front/dropped': '90', 'rear/dropped': '85',
                              'decode_p50_ms': '14.2', 'inference_p50_ms': '640.0'},
              'diagnostics_start': {'front/dropped': '40', 'rear/dropped': '41'}}
    row = cameras_table._row(2, result, 'compressed', 'none', 10.0)
    assert row == ['2', 'compressed / none', '10', '3.80', '1.80 / 2.00', '812', '1500',
                   'front 50, rear 44', '14.2', '640.0']
    error = cameras_table._row(6, {'error': 'segment_node not active'}, 'raw', 'exact', 10.0)
    assert error[3] == 'error: segment_node not active' and len(error) == len(
        cameras_table.HEADER)


def test_camera_names_are_the_rig_then_numbered():
    assert cameras_table.camera_names(2) == ['front', 'rear']
    assert cameras_table.camera_names(8)[-2:] == ['cam6', 'cam7']


def test_the_table_module_imports_no_rclpy():
    code = ('import sys; import cityseg_ros.bench.cameras_table; '
            'sys.exit(int("rclpy" in sys.modules))')
    assert subprocess.run([sys.executable, '-c', code]).returncode == 0
