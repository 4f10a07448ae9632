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

"""The main job end to end: replay -> segment_node -> recorder, with real rclpy."""

from cityseg_ros.ros import demo


def test_demo_replays_a_generated_sequence_through_the_node(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, 'SHARED', tmp_path / 'no-shared')  # force the generated frames
    monkeypatch.setattr(demo, 'synthetic_stereo',
                        lambda n, size=(128, 256): _SMALL(n, size))
    code = demo.main(['--weights', '', '--device', 'cpu', '--frames', '4', '--rate', '10',
                      '--save', '1', '--input-size', '64x128', '--out', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'pairs segmented' in out and 'stamp -> labels received' in out
    for cam in ('left', 'right'):
        for kind in demo.OUTPUTS:
            assert (tmp_path / 'out' / f'0000_{cam}_{kind}.png').is_file(), (cam, kind)


_SMALL = demo.synthetic_stereo
