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

"""The README's parameter table is generated from the one parameter table."""

from pathlib import Path

from cityseg_ros.ros.params import markdown_table

README = Path(__file__).resolve().parents[2] / 'README.md'


def test_readme_parameter_table_is_current():
    assert markdown_table() in README.read_text(), (
        'README.md parameter table is stale: paste the output of '
        'python -c "from cityseg_ros.ros.params import markdown_table; print(markdown_table())"')


def test_readme_topic_table_is_current_and_names_every_output():
    from cityseg_ros.ros.outputs import OUTPUTS
    from cityseg_ros.ros.topics import markdown_topics
    assert markdown_topics() in README.read_text(), (
        'README.md topic table is stale: paste the output of '
        'python -c "from cityseg_ros.ros.topics import markdown_topics; print(markdown_topics())"')
    for name in OUTPUTS:
        assert f'`C/semantic/{name}`' in markdown_topics(), name
    assert 'never JPEG for labels' in markdown_topics()
