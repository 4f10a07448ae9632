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

"""The soak, short: 20 s of a 30 Hz stream with every fault of the cycle, node in a process."""

import pytest


def test_soak_20_s_output_resumes_after_every_fault_and_the_node_stays_active():
    pytest.importorskip('torch')
    from cityseg_ros.ros.soak_table import format_result, soak

    result = soak(duration_s=20.0, settle_s=0.3)
    table = format_result(result)
    print(table)
    assert result.error is None, table
    faults = {f.name for f in result.faults}
    assert len(faults) == 13, table  # the whole cycle ran at least once
    assert all(f.resumed for f in result.faults), table
    assert not result.unexpected_states, table
    assert result.published_pairs > 0 and result.clouds > 0, table
    assert result.final.get('internal_errors') == '0', table
    assert result.ok
