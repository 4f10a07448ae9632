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


"""export_model: write a zoo network as an ONNX graph (input ``image``, output ``logits``).

Example::

    export_model --model espnetv2 --weights auto --input-size 512x1024 --dynamic-batch --out m.onnx

The graph takes ``image``, N,3,H,W float32 RGB normalised with the model's mean and std (the
zoo's; written into the graph's metadata), and returns ``logits`` = ``model(x)``, N,C,H/s,W/s
before any upsampling. Unless ``--no-check`` is given and when onnxruntime is installed, the
graph is run once against torch and the largest difference is printed.
"""

import argparse
import logging
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.backends import require
from cityseg_ros.backends.export import (compare_with_onnxruntime, export_onnx, MIN_OPSET, OPSET,
                                         prepare_network)
from cityseg_ros.errors import ConfigError
from cityseg_ros.models.zoo import get_spec, model_names
from cityseg_ros.tools.common import EXIT_OK, run_cli
from cityseg_ros.tools.segment_images import parse_size

logger = logging.getLogger('export_model')

#: The golden fixtures' tolerance for a float32 CPU candidate (shared/reference/GOLDEN.md §5).
TOLERANCE = 2e-5
MAX_BATCH = 256


def _batch(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f'{text!r} must be 1..{MAX_BATCH}')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='export_model', description=__doc__.splitlines()[0])
    parser.add_argument('--model', required=True, choices=model_names(), help='zoo model name')
    parser.add_argument('--weights', required=True,
                        help="checkpoint file, 'auto' (the model's file in the cache, see "
                             "fetch_weights) or 'none' (random weights)")
    parser.add_argument('--input-size', type=parse_size, required=True, metavar='HxW',
                        help='network input size, e.g. 512x1024')
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--batch', type=_batch, default=1, help='fixed batch size (default: 1)')
    group.add_argument('--dynamic-batch', action='store_true',
                       help='symbolic batch dimension (any batch 1..256)')
    parser.add_argument('--out', type=Path, required=True, help='the .onnx file to write')
    parser.add_argument('--opset', type=int, default=OPSET,
                        help=f'ONNX opset, >= {MIN_OPSET} (default: {OPSET})')
    parser.add_argument('--no-optimize', dest='optimize', action='store_false',
                        help='skip constant folding and clean-up (a larger graph)')
    parser.add_argument('--no-check', dest='check', action='store_false',
                        help='do not compare the graph with torch (needs onnxruntime)')
    return parser


def run(args: argparse.Namespace) -> int:
    spec = get_spec(args.model)
    h, w = args.input_size
    div = spec.size_divisor
    if h % div or w % div:
        raise ConfigError(f'--input-size {h}x{w}: {spec.name} needs sides that are multiples '
                          f'of {div}, e.g. {spec.test_size[0]}x{spec.test_size[1]}')
    if args.out.suffix != '.onnx':
        raise ConfigError(f'--out {args.out} must end in .onnx')
    if args.out.is_dir():
        raise ConfigError(f'--out {args.out} is a directory; name the .onnx file to write')
    for parent in args.out.parents:  # before building the model, not after exporting it
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f'--out {args.out}: {parent} is a file, not a folder')
            break
    if args.opset < MIN_OPSET:
        raise ConfigError(f'--opset {args.opset}: use {MIN_OPSET} or newer (default {OPSET})')
    require('onnx', 'onnx', 'export_model')  # before minutes of model building
    require('onnxscript', 'onnx', "export_model (torch's dynamo exporter)")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if args.opset > newest:  # else minutes later, the exporter's multi-line colour message
        raise ConfigError(f'--opset {args.opset}: the installed onnx {onnx.__version__} knows '
                          f'opsets up to {newest}; use {MIN_OPSET}..{newest} (default {OPSET})')
    weights = None if str(args.weights).lower() == 'none' else args.weights
    net = prepare_network(spec.name, weights)
    meta = {'cityseg_ros.model': spec.name, 'cityseg_ros.mean': spec.mean,
            'cityseg_ros.std': spec.std, 'cityseg_ros.channel_order': 'RGB',
            'cityseg_ros.output_stride': spec.output_stride,
            'cityseg_ros.num_classes': spec.num_classes,
            'cityseg_ros.weights': str(args.weights)}
    export_onnx(net, args.out, (h, w), batch=args.batch, dynamic_batch=args.dynamic_batch,
                opset=args.opset, metadata=meta, optimize=args.optimize)
    print(f'wrote {args.out}: image N,3,{h},{w} float32 -> logits '
          f'N,{spec.num_classes},{-(-h // spec.output_stride)},{-(-w // spec.output_stride)}')
    if args.check:
        _check(net, args)
    return EXIT_OK


def _check(net, args: argparse.Namespace) -> None:
    try:
        import onnxruntime  # noqa: F401 -- only to know whether the check can run
    except ImportError:
        print('not checked: onnxruntime is not installed (pip install .[onnx])')
        return
    import torch
    batch = 2 if args.dynamic_batch else args.batch
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 3) + tuple(args.input_size), generator=gen) * 4.0 - 2.0
    diff, normalised = compare_with_onnxruntime(net, args.out, x)
    print(f'onnxruntime vs torch, batch {batch}: max |diff| {diff:.3g} '
          f'({normalised:.3g} of max(1, max |logit|))')
    if normalised > TOLERANCE:
        raise ConfigError(f'the graph in {args.out} differs from torch by {normalised:.3g} '
                          f'(normalised; tolerance {TOLERANCE:g}): do not deploy it')


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
