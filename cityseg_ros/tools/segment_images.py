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

"""segment_images: run a zoo model on image files and write label PNGs.

Example::

    segment_images --model espnetv2 --weights auto --out out/ --color --overlay frames/
"""

import argparse
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.engine import PRECISIONS, Segmenter, TTA_MODES
from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.imageio import find_images, read_rgb, write_png
from cityseg_ros.labels import train_ids_to_label_ids
from cityseg_ros.models.zoo import model_names
from cityseg_ros.render import colorize, overlay
from cityseg_ros.tools.common import EXIT_OK, run_cli


def parse_size(text: str) -> tuple:
    """Parse ``HxW`` (e.g. ``512x1024``) into (H, W)."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HxW, e.g. 512x1024') from None
    return h, w


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model/weights/device options shared by segment_images, evaluate and benchmark."""
    parser.add_argument('--model', default='espnetv2', choices=model_names(),
                        help='zoo model name (default: espnetv2)')
    parser.add_argument('--weights', default='auto',
                        help="checkpoint file, 'auto' (the model's file in the cache, see "
                             "fetch_weights) or 'none' (random weights, for tests)")
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS)
    parser.add_argument('--tta', default='none', choices=TTA_MODES,
                        help='test-time augmentation (default: none)')
    parser.add_argument('--input-size', type=parse_size, default=None, metavar='HxW',
                        help="network input size (default: the model's test size)")


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    """Build the Segmenter described by :func:`add_model_arguments`' options."""
    weights = None if str(args.weights).lower() == 'none' else args.weights
    return Segmenter(args.model, weights=weights, device=args.device, precision=args.precision,
                     tta=args.tta, input_size=args.input_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='segment_images',
        description='Segment image files; writes <stem>_trainIds.png (and optional renderings) '
                    "at each input image's size.")
    parser.add_argument('images', nargs='+', type=Path, help='image files or directories')
    parser.add_argument('--out', type=Path, required=True, help='output directory')
    add_model_arguments(parser)
    parser.add_argument('--batch-size', type=int, default=1)
    parser.add_argument('--no-train-ids', dest='train_ids', action='store_false',
                        help='do not write <stem>_trainIds.png')
    parser.add_argument('--label-ids', action='store_true',
                        help='also write <stem>_labelIds.png (the official evaluation format)')
    parser.add_argument('--color', action='store_true', help='also write <stem>_color.png')
    parser.add_argument('--overlay', action='store_true', help='also write <stem>_overlay.png')
    parser.add_argument('--alpha', type=float, default=0.5, help='photo weight in the overlay')
    parser.add_argument('--confidence', action='store_true',
                        help='also write <stem>_confidence.png (max softmax x 255)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def _write_outputs(args: argparse.Namespace, path: Path, image, pred) -> None:
    stem = args.out / path.stem
    if args.train_ids:
        write_png(f'{stem}_trainIds.png', pred.labels)
    if args.label_ids:
        write_png(f'{stem}_labelIds.png', train_ids_to_label_ids(pred.labels))
    color = colorize(pred.labels) if (args.color or args.overlay) else None
    if args.color:
        write_png(f'{stem}_color.png', color)
    if args.overlay:
        write_png(f'{stem}_overlay.png', overlay(image, pred.labels, args.alpha, color))
    if pred.confidence is not None:
        write_png(f'{stem}_confidence.png', pred.confidence)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise ConfigError('--batch-size must be >= 1')
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError('--alpha must be in [0, 1]')
    paths = list(find_images(args.images))
    if not paths:
        raise ImageError('no image files found in ' + ' '.join(map(str, args.images)))
    # Check every file before loading a model: a bad file 500 images in should not cost a run.
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ImageError(f'{missing[0]} not found ({len(missing)} missing input file(s))')
    seg = segmenter_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(paths), unit='img', disable=args.quiet, file=sys.stderr) as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            images = [read_rgb(p) for p in chunk]
            preds = seg.predict(images, confidence=args.confidence)
            for path, image, pred in zip(chunk, images, preds):
                _write_outputs(args, path, image, pred)
            bar.update(len(chunk))
    print(f'wrote {len(paths)} result(s) to {args.out}')
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
