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

"""The main job end to end: player -> segment_node process -> recorder, with real rclpy."""

from pathlib import Path
import uuid

from cityseg_ros.ros import demo
import yaml

REPO = Path(__file__).resolve().parents[2]


def test_demo_replays_a_generated_sequence_through_a_node_process(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, 'SHARED', tmp_path / 'no-shared')  # force the generated frames
    monkeypatch.setattr(demo, 'synthetic_stereo',
                        lambda n, size=(128, 256): _SMALL(n, size))
    code = demo.main(['--weights', '', '--device', 'cpu', '--frames', '4', '--rate', '10',
                      '--save', '1', '--input-size', '64x128', '--out', str(tmp_path / 'out'),
                      '--namespace', f'demo_{uuid.uuid4().hex[:8]}'])
    out = capsys.readouterr().out
    assert code == 0, out
    assert 'pairs segmented' in out and 'stamp -> labels received' in out
    assert '| node state, device | active, cpu |' in out  # read from the node's /diagnostics
    for cam in ('left', 'right'):
        for kind in demo.OUTPUTS:
            assert (tmp_path / 'out' / f'0000_{cam}_{kind}.png').is_file(), (cam, kind)


def test_demo_node_runs_the_package_params_file_with_only_the_given_options(tmp_path):
    args = demo.build_parser().parse_args(['--input-size', '64x128'])
    overrides = demo.node_overrides(args, weights='w.pth')
    # Nothing the user gets from config/segment.yaml is replaced, the input QoS least of all.
    assert overrides == {'weights': 'w.pth', 'input_height': 64, 'input_width': 128}
    cmd = demo.node_command('stereo', tmp_path / 'over.yaml')
    assert cmd[1:3] == ['-m', 'cityseg_ros.ros.node']
    files = [cmd[i + 1] for i, part in enumerate(cmd) if part == '--params-file']
    assert [Path(f).resolve() for f in files] == [(REPO / 'config' / 'segment.yaml').resolve(),
                                                  (tmp_path / 'over.yaml').resolve()]
    assert not any('input_reliability' in part for part in cmd)
    assert demo.build_parser().parse_args([]).player_reliability == 'reliable'


def test_demo_writes_overrides_that_keep_empty_weights_a_string(tmp_path, monkeypatch):
    started = {}
    monkeypatch.setattr(demo.subprocess, 'Popen', lambda cmd: started.setdefault('cmd', cmd))
    demo.start_node('ns', {'weights': '', 'cameras': ['left']}, tmp_path)
    document = yaml.safe_load((tmp_path / 'demo_overrides.yaml').read_text())
    assert document == {'/**': {'ros__parameters': {'weights': '', 'cameras': ['left']}}}
    assert started['cmd'][5:] == demo.node_command('ns', tmp_path / 'demo_overrides.yaml')


def test_demo_without_a_running_node_fails_with_one_line(tmp_path, capsys):
    code = demo.main(['--node', 'none', '--timeout', '1', '--frames', '1', '--synthetic',
                      '32x64', '--out', str(tmp_path), '--namespace',
                      f'nobody_{uuid.uuid4().hex[:8]}'])
    err = capsys.readouterr().err
    assert code == 2
    assert 'did not subscribe to the images within 1 s' in err


_SMALL = demo.synthetic_stereo
