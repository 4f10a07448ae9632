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

"""benchmark: print the performance tables as markdown (numbers, never asserts).

Tables: ``forward`` (model forward per model/precision), ``backends`` (torch, ONNX Runtime,
OpenVINO, TensorRT side by side), plus the tables other modules add (render, node, eval, ...).
Example: ``benchmark --tables forward backends render --runs 5``. ``--backends`` picks the
backends of the ``backends`` table and runs the ``node`` table once per backend.
"""

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from cityseg_ros.backends import BACKENDS
from cityseg_ros.bench.timing import environment_line
from cityseg_ros.errors import ConfigError
from cityseg_ros.models.zoo import model_names
from cityseg_ros.tools.common import EXIT_OK, run_cli
from cityseg_ros.tools.segment_images import parse_size

#: table name -> (module with ``run(runs=...) -> str``, title). The node table lives under
#: cityseg_ros.ros because it needs rclpy; it is imported only when asked for.
TABLES = {
    'forward': ('cityseg_ros.bench.forward_table', 'Model forward time'),
    'backends': ('cityseg_ros.bench.backends_table',
                 'Backends side by side (reference: the fp32 torch path)'),
    'render': ('cityseg_ros.bench.render_table', 'Render and message encode per 2048x1024 frame'),
    'hrnet': ('cityseg_ros.bench.hrnet_table',
              'HRNet-W48+OCR forward against the official code (CPU, peak memory)'),
    'internimage': ('cityseg_ros.bench.internimage_table',
                    'UperNet+InternImage-L/XL forward, peak memory and DCNv3 share'),
    'node': ('cityseg_ros.ros.node_table',
             'End-to-end latency through DDS (publisher process -> node process -> subscriber)'),
    'stereo': ('cityseg_ros.bench.stereo_table',
               'Stereo disparity and semantic cloud per 2048x1024 pair'),
    'metrics': ('cityseg_ros.bench.metrics_table', 'Scoring speed against cityscapesscripts'),
    'eval': ('cityseg_ros.bench.eval_table', 'Bag evaluator frames/s against cityscapesscripts'),
    'soak': ('cityseg_ros.ros.soak_table',
             'Soak: the node under a 30 Hz stream and a cycle of faults (--duration-s)'),
    'cameras': ('cityseg_ros.bench.cameras_table', 'N cameras of 1920x1080 into one node'),
}

#: The quick tables (minutes on 2 CPU cores); hrnet and internimage take tens of minutes.
DEFAULT_TABLES = ['forward', 'backends', 'render', 'node', 'stereo', 'metrics', 'eval']


# Option bounds: a run of 0 rows or batches of 0 images has no median (it was an IndexError),
# and a NaN or negative soak ended at once while 1e308 s never did.
MAX_RUNS = 10_000
MAX_BATCH = 256
MAX_DURATION_S = 7 * 86400.0


def _bounded(kind: type, low: float, high: float):
    """Return an argparse type: ``kind(text)`` within ``low..high`` (NaN never is)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = 'an integer' if kind is int else 'a number'
            raise argparse.ArgumentTypeError(f'{text!r} is not {what}') from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'{text!r} must be {low:g}..{high:g}')
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='benchmark', description=__doc__.splitlines()[0])
    parser.add_argument('--tables', nargs='+', default=DEFAULT_TABLES,
                        help=f'tables to print, from: {", ".join(TABLES)}')
    parser.add_argument('--models', nargs='+', default=['espnetv2'], choices=model_names())
    parser.add_argument('--device', default='auto')
    parser.add_argument('--runs', type=_bounded(int, 1, MAX_RUNS), default=5,
                        help=f'timed runs per row, 1..{MAX_RUNS}')
    parser.add_argument('--batch-size', type=_bounded(int, 1, MAX_BATCH), default=1,
                        help=f'images per forward pass, 1..{MAX_BATCH}')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, default=None,
                        help='backends of the backends table (default: all for the device); '
                             'the node table runs once per backend (default: torch)')
    parser.add_argument('--duration-s', type=_bounded(float, 1.0, MAX_DURATION_S), default=600.0,
                        help='length of the soak table run, seconds (default 600, at most '
                             f'{MAX_DURATION_S:g})')
    parser.add_argument('--sizes', nargs='+', type=parse_size, metavar='HxW',
                        default=[(512, 1024), (1024, 2048)],
                        help='input sizes of the hrnet and internimage tables, one table each '
                             '(default: 512x1024 1024x2048)')
    return parser


def run(args: argparse.Namespace) -> int:
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        raise ConfigError(f'unknown table(s) {unknown}; choose from {list(TABLES)}')
    # stdout is the markdown tables: the engine's progress lines stay out of them.
    logging.getLogger().setLevel(logging.WARNING)
    print(environment_line())
    for table in args.tables:
        module_name, title = TABLES[table]
        module = importlib.import_module(module_name)
        kwargs = {'runs': args.runs}
        if table == 'forward':
            kwargs.update(models=args.models, device=args.device, batch_size=args.batch_size)
        elif table == 'node':
            kwargs.update(model=args.models[0], device=args.device)
        elif table == 'backends':
            kwargs.update(models=args.models, device=args.device, backends=args.backends)
        elif table == 'eval':
            kwargs.update(device=args.device)
        elif table == 'soak':
            kwargs.update(duration_s=args.duration_s, model=args.models[0], device=args.device)
        print(f'\n## {title}\n')
        if table in ('hrnet', 'internimage'):
            for size in args.sizes:
                print(module.run(size=size, **kwargs), flush=True)
        elif table == 'node':
            for backend in args.backends or ['torch']:
                print(module.run(backend=backend, **kwargs), flush=True)
        else:
            print(module.run(**kwargs), flush=True)
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
