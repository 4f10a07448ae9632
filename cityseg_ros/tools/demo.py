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

"""demo: segment real Cityscapes frames (or your images) and write the pictures.

Weights: the official ESPNetv2 file in ../shared when this is a checkout beside it, else the cache
(``fetch_weights --model espnetv2``), else random weights with a loud warning.
"""

import argparse
import logging
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.checkpoints import cache_dir
from cityseg_ros.models.zoo import get_spec
from cityseg_ros.tools import segment_images
from cityseg_ros.tools.common import run_cli

logger = logging.getLogger('demo')

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / 'shared'


def _default_weights() -> str:
    name = get_spec('espnetv2').weights[0].filename
    for candidate in (SHARED / 'data' / 'weights' / 'espnetv2' / name, cache_dir() / name):
        if candidate.is_file():
            return str(candidate)
    logger.warning('!!! no ESPNetv2 weights found: running UNTRAINED weights, the labels are '
                   'meaningless. Run `fetch_weights --model espnetv2` for real output. !!!')
    return 'none'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='demo', description=__doc__.splitlines()[0])
    parser.add_argument('images', nargs='*', type=Path,
                        help='images or folders (default: ../shared/data/cityscapes)')
    parser.add_argument('--out', type=Path, default=Path('out/demo'))
    return parser


def run(args: argparse.Namespace) -> int:
    images = args.images or [SHARED / 'data' / 'cityscapes' / 'leftImg8bit']
    argv = ['--model', 'espnetv2', '--weights', _default_weights(), '--out', str(args.out),
            '--color', '--overlay', *map(str, images)]
    return segment_images.run(segment_images.build_parser().parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
