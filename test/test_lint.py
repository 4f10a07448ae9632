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

"""ament-style lint gates (flake8 with ament's plugins, pep257, license headers) without ament."""

from pathlib import Path
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
LINTED = ['cityseg_ros', 'test', 'launch', 'benchmarks', 'setup.py']


def _python_files():
    for name in LINTED:
        path = REPO / name
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(path.rglob('*.py'))


def _run(module, *args):
    pytest.importorskip(module)
    targets = [str(REPO / n) for n in LINTED if (REPO / n).exists()]
    return subprocess.run([sys.executable, '-m', module, *args, *targets], cwd=REPO,
                          capture_output=True, text=True)


@pytest.mark.linter
def test_flake8():
    result = _run('flake8')
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.linter
def test_pep257():
    result = _run('pydocstyle')
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.linter
def test_copyright_headers():
    missing = [str(p.relative_to(REPO)) for p in _python_files()
               if p.stat().st_size and 'Apache License' not in p.read_text()[:600]]
    assert not missing, f'files without the license header: {missing}'
