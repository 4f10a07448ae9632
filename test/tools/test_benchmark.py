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

"""The benchmark CLI dispatches tables; the tables themselves print numbers, never assert."""

import sys
from unittest import mock

from cityseg_ros.tools import benchmark
import pytest


def test_heavy_model_tables_run_once_per_size(capsys):
    calls = []
    with mock.patch('cityseg_ros.bench.hrnet_table.run',
                    lambda **kw: calls.append(kw) or '| table |'):
        code = benchmark.main(['--tables', 'hrnet', '--runs', '1', '--sizes', '64x128',
                               '512x1024'])
    assert code == 0
    assert calls == [{'size': (64, 128), 'runs': 1}, {'size': (512, 1024), 'runs': 1}]
    assert capsys.readouterr().out.count('| table |') == 2


def test_unknown_table_exits_2_with_one_line(capsys):
    assert benchmark.main(['--tables', 'nope']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'unknown table' in err[0]


@pytest.mark.parametrize('option, message', [
    # Before: IndexError / ValueError tracebacks, a soak that ended at once (NaN, -1) or
    # never (1e308), and 1e20 runs that never ended.
    (('--runs', '0'), "'0' must be 1..10000"),
    (('--runs', str(10**20)), 'must be 1..10000'),
    (('--batch-size', '0'), "'0' must be 1..256"),
    (('--batch-size', str(10**11)), 'must be 1..256'),
    (('--duration-s', 'nan'), "'nan' must be 1..604800"),
    (('--duration-s', '-1'), "'-1' must be 1..604800"),
    (('--duration-s', '1e308'), "'1e308' must be 1..604800"),
])
def test_option_values_out_of_range_exit_2_with_one_line(capsys, option, message):
    with pytest.raises(SystemExit) as exc:
        benchmark.main(['--tables', 'forward', *option])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count('\n') == 1 and message in err, err


def test_backends_table_and_node_table_per_backend_are_dispatched(capsys):
    calls = []
    with mock.patch('cityseg_ros.bench.backends_table.run',
                    lambda **kw: calls.append(('backends', kw)) or '| b |'), \
            mock.patch('cityseg_ros.ros.node_table.run',
                       lambda **kw: calls.append(('node', kw)) or '| n |'):
        code = benchmark.main(['--tables', 'backends', 'node', '--runs', '1', '--device', 'cpu',
                               '--backends', 'onnxruntime', 'openvino'])
    assert code == 0
    assert calls[0] == ('backends', {'runs': 1, 'models': ['espnetv2'], 'device': 'cpu',
                                     'backends': ['onnxruntime', 'openvino']})
    assert [kw['backend'] for table, kw in calls[1:]] == ['onnxruntime', 'openvino']


def test_backends_table_says_what_is_not_installed(monkeypatch):
    from cityseg_ros.bench import backends_table
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    table = backends_table.run(models=['espnetv2'], device='cpu', runs=1, sizes=[(64, 128)],
                               variants=[('torch', 'fp32'), ('onnxruntime', 'fp32')],
                               isolate=False)
    torch_row, ort_row = [line for line in table.splitlines() if line.startswith('| espnetv2')]
    assert '| torch | fp32 | torch ' in torch_row and '100.000' in torch_row
    assert 'not installed: pip install .[onnx]' in ort_row


def test_backends_table_skips_rows_beyond_its_time_budget():
    from cityseg_ros.bench import backends_table
    table = backends_table.run(models=['espnetv2', 'hrnet_w48_ocr'], device='cpu', runs=1,
                               budget_s=0.0)
    rows = [line for line in table.splitlines() if line.startswith(('| espnetv2', '| hrnet'))]
    assert len(rows) == 2 * len(backends_table.CPU_VARIANTS)
    assert all('skipped: time budget' in row for row in rows)
