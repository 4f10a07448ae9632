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

"""The stereo-pair table runs end to end and reports every column (numbers are not checked)."""

from cityseg_ros.bench import forward_table
import numpy as np


def test_pair_table_has_the_acceptance_columns(monkeypatch):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 256, 3), dtype=np.uint8) for _ in range(2)]
    monkeypatch.setattr(forward_table, '_pair_inputs',
                        lambda name: (None, images[0], images[1], 'test images'))
    table = forward_table.pair_table('espnetv2', 'cpu', runs=1, input_size=(64, 128))
    lines = table.splitlines()
    assert lines[0].startswith('Stereo pair: test images; espnetv2 at 64x128, random weights')
    assert 'pair predict ms (p50)' in lines[2] and 'batch of 2' in lines[2]
    rows = [line for line in lines if line.startswith('| labels')]
    assert len(rows) == 3 and all(row.rstrip(' |').endswith('x') for row in rows)
    assert 'error' not in table
