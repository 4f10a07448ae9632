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
import logging
import math
import os
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.backends import BACKENDS
from cityseg_ros.engine import MIN_IMAGE_SIDE, PRECISIONS, Segmenter, TTA_MODES
from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.imageio import find_images, MAX_IMAGE_PIXELS, probe_file, read_rgb, write_png
from cityseg_ros.labels import train_ids_to_label_ids
from cityseg_ros.models.zoo import model_names
from cityseg_ros.render import colorize, overlay
from cityseg_ros.tools.common import EXIT_OK, run_cli

logger = logging.getLogger('segment_images')

#: Largest network input side, px: as the node's input_height / input_width parameters.
MAX_INPUT_SIDE = 8192
#: Images held in memory at once are at most this many.
MAX_BATCH_SIZE = 64


def parse_size(text: str) -> tuple:
    """Parse ``HxW`` (e.g. ``512x1024``) into (H, W), each side 1..:data:`MAX_INPUT_SIDE`."""
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not HxW, e.g. 512x1024') from None
    if not (0 < h <= MAX_INPUT_SIDE and 0 < w <= MAX_INPUT_SIDE):
        raise argparse.ArgumentTypeError(f'{text!r}: each side must be 1..{MAX_INPUT_SIDE} px')
    return h, w


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'{text!r} must be >= 1')
    return value


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f'{text!r} must be in [0, 1]')
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model/weights/device options shared by segment_images, evaluate and benchmark."""
    parser.add_argument('--model', default='espnetv2', choices=model_names(),
                        help='zoo model name (default: espnetv2)')
    parser.add_argument('--weights', default='auto',
                        help="checkpoint file, 'auto' (the model's file in the cache, see "
                             "fetch_weights) or 'none' (random weights, for tests)")
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--precision', default='fp32', choices=PRECISIONS)
    parser.add_argument('--backend', default='torch', choices=BACKENDS,
                        help='what runs the network (default: torch; the others are pip '
                             'extras: .[onnx], .[openvino], .[tensorrt])')
    parser.add_argument('--tta', default='none', choices=TTA_MODES,
                        help='test-time augmentation (default: none)')
    parser.add_argument('--input-size', type=parse_size, default=None, metavar='HxW',
                        help="network input size, each side 1..8192 (default: the model's "
                             'test size)')


def segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    """Build the Segmenter described by :func:`add_model_arguments`' options."""
    weights = None if str(args.weights).lower() == 'none' else args.weights
    return Segmenter(args.model, weights=weights, device=args.device, precision=args.precision,
                     tta=args.tta, input_size=args.input_size,
                     backend=getattr(args, 'backend', 'torch'))


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f'{text!r}: at most {MAX_BATCH_SIZE} images per batch '
                                         '(each is held in memory)')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='segment_images',
        description='Segment image files; writes <stem>_trainIds.png (and optional renderings) '
                    "at each input image's size. Inputs from different directories with the "
                    'same name keep their relative directories under --out.')
    parser.add_argument('images', nargs='+', type=Path, help='image files or directories')
    parser.add_argument('--out', type=Path, required=True,
                        help='output directory (created if missing)')
    add_model_arguments(parser)
    parser.add_argument('--batch-size', type=_batch_size, default=1,
                        help=f'images per forward pass, 1..{MAX_BATCH_SIZE} (default: 1)')
    parser.add_argument('--max-image-pixels', type=_positive_int, default=MAX_IMAGE_PIXELS,
                        metavar='N',
                        help='refuse input images with more pixels than this, read from the '
                             f'file header before decoding (default: {MAX_IMAGE_PIXELS})')
    parser.add_argument('--no-train-ids', dest='train_ids', action='store_false',
                        help='do not write <stem>_trainIds.png')
    parser.add_argument('--label-ids', action='store_true',
                        help='also write <stem>_labelIds.png (the official evaluation format)')
    parser.add_argument('--color', action='store_true', help='also write <stem>_color.png')
    parser.add_argument('--overlay', action='store_true', help='also write <stem>_overlay.png')
    parser.add_argument('--alpha', type=_unit_float, default=0.5,
                        help='photo weight in the overlay, 0..1')
    parser.add_argument('--confidence', action='store_true',
                        help='also write <stem>_confidence.png (max softmax x 255)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def _suffixes(args: argparse.Namespace) -> list:
    """Return the file suffixes written per image."""
    wanted = [('_trainIds.png', args.train_ids), ('_labelIds.png', args.label_ids),
              ('_color.png', args.color), ('_overlay.png', args.overlay),
              ('_confidence.png', args.confidence)]
    return [suffix for suffix, on in wanted if on]


def plan_outputs(paths: Sequence[Path], out: Path) -> dict:
    """Map each input image to its output stem under ``out``, never two inputs to one stem.

    Inputs with distinct names are written flat (``out/<stem>_*.png``). When two inputs share
    a name (``a/x.png``, ``b/x.png``), every output keeps its input's directory relative to
    the inputs' common directory (``out/a/x_*.png``, ``out/b/x_*.png``).

    Raises:
        ImageError: two inputs in one directory with one stem (``x.png`` and ``x.jpg``).
    """
    absolute = [Path(os.path.abspath(p)) for p in paths]
    stems = [p.stem for p in absolute]
    if len(set(stems)) == len(stems):
        return {p: out / p.stem for p in paths}
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    plan, seen = {}, {}
    for path, full in zip(paths, absolute):
        stem = out / full.parent.relative_to(common) / full.stem
        if stem in seen:
            raise ImageError(f'{seen[stem]} and {path} would both be written as '
                             f'{stem}_*.png; rename one or segment them separately')
        seen[stem] = path
        plan[path] = stem
    logger.info('inputs share file names: outputs keep their directories relative to %s',
                common)
    return plan


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f'--out {out} exists and is not a directory; pass a directory (it is '
                          'created if missing)')


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f'output directory {path} cannot be created: '
                          f'{exc.strerror or exc}') from None


def _write_outputs(args: argparse.Namespace, stem: Path, image, pred) -> None:
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


def _inputs(args: argparse.Namespace) -> list:
    """Return the unique input files (same file named twice counts once), checked."""
    paths, seen = [], set()
    for path in find_images(args.images, exclude=args.out):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)
    if not paths:
        raise ImageError('no image files found in ' + ' '.join(map(str, args.images)))
    # Check every file's header before loading a model: a bad file 500 images in should not
    # cost a run, and nothing above --max-image-pixels is ever decoded.
    for path in paths:
        info = probe_file(path, args.max_image_pixels)
        if min(info.width, info.height) < MIN_IMAGE_SIDE:
            raise ImageError(f'{path} is {info.width}x{info.height} pixels; the smallest '
                             f'accepted side is {MIN_IMAGE_SIDE} px')
        if info.bit_depth > 8:
            raise ImageError(f'{path} is a {info.bit_depth}-bit image; convert it to 8-bit '
                             'RGB first')
    return paths


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    _check_out(args.out)
    paths = _inputs(args)
    plan = plan_outputs(paths, args.out)
    inputs = {os.path.realpath(p) for p in paths}
    for stem in plan.values():
        for suffix in _suffixes(args):
            if os.path.realpath(f'{stem}{suffix}') in inputs:
                raise ImageError(f'output {stem}{suffix} is also an input; choose another '
                                 '--out')
    _make_dir(args.out)  # before the model: a bad --out is found in a second
    seg = segmenter_from_args(args)
    with tqdm(total=len(paths), unit='img', disable=args.quiet, file=sys.stderr) as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            images = [read_rgb(p, args.max_image_pixels) for p in chunk]
            preds = seg.predict(images, confidence=args.confidence)
            for path, image, pred in zip(chunk, images, preds):
                _make_dir(plan[path].parent)
                _write_outputs(args, plan[path], image, pred)
            bar.update(len(chunk))
    print(f'wrote {len(paths)} result(s) to {args.out}')
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
