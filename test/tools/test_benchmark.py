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

from unittest import mock

from cityseg_ros.tools import benchmark


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
