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

"""fetch_weights: download released checkpoints into the cache and verify them.

Examples::

    fetch_weights --model espnetv2
    fetch_weights --model espnetv2 --file espnetv2_s_0.5_city_512x256.pth
    fetch_weights --all --mirror http://weights.lan/cityseg/
    fetch_weights --all --verify

Prints ``MODEL: PATH`` for each file. ``--weights auto`` in the other tools uses these files.
"""

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Optional, Sequence

from cityseg_ros.checkpoints import (cache_dir, check_file, DownloadLimits, fetch, file_problem,
                                     MIRROR_ENV)
from cityseg_ros.errors import CitysegError, ConfigError, ZooError
from cityseg_ros.models.zoo import get_spec, model_names, ModelSpec, WeightsFile
from cityseg_ros.tools.common import EXIT_OK, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='fetch_weights',
        description='Download released checkpoints into the cache (resumable, sha256-checked) '
                    'or verify the copies already there.')
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--model', action='append', default=[], metavar='M',
                       help=f'zoo model (repeatable): {", ".join(model_names())}')
    which.add_argument('--all', action='store_true',
                       help='every zoo model (its default file); models without released '
                            'weights are reported and skipped')
    parser.add_argument('--file', metavar='NAME',
                        help="one of the model's released files (default: the first)")
    parser.add_argument('--verify', action='store_true',
                        help='download nothing: check the files already in the cache, exit 2 '
                             'listing bad or missing ones')
    parser.add_argument('--cache-dir', type=Path, default=None,
                        help=f'default: {cache_dir()} ($CITYSEG_ROS_CACHE)')
    parser.add_argument('--mirror', metavar='URL', default=None,
                        help='base URL that replaces the release URL up to the file name '
                             f'(default: ${MIRROR_ENV})')
    limits = DownloadLimits()
    parser.add_argument('--timeout', type=_positive, default=limits.timeout, metavar='S',
                        help='seconds for connecting, for the response headers and for any one '
                             'read (default: %(default)s)')
    parser.add_argument('--min-rate', type=_non_negative, default=limits.min_rate,
                        metavar='B/S', help='give up on a server slower than this many bytes/s '
                        f'over {limits.rate_window:g} s; 0: never (default: %(default)s)')
    parser.add_argument('--deadline', type=_non_negative, default=limits.deadline, metavar='S',
                        help='seconds for each whole download; 0: no limit (default: '
                             '%(default)s)')
    parser.add_argument('--quiet', action='store_true', help='no progress bar, only warnings')
    return parser


_MAX_OPTION = 1e9


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'{text!r} is not a finite number')
    if value > _MAX_OPTION:  # sockets and timers take at most ~9.2e9 s (int64 nanoseconds)
        raise argparse.ArgumentTypeError(f'{text!r} is more than {_MAX_OPTION:g}')
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'{text!r} must be > 0')
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'{text!r} must be >= 0')
    return value


def _limits(args: argparse.Namespace) -> DownloadLimits:
    # The rate is averaged over a window no longer than the deadline, so both can act.
    window = DownloadLimits().rate_window
    if args.deadline:
        window = min(window, args.deadline)
    return DownloadLimits(timeout=args.timeout, min_rate=args.min_rate, rate_window=window,
                          deadline=args.deadline or None)


def _selection(args: argparse.Namespace) -> list[tuple[ModelSpec, Optional[WeightsFile]]]:
    """(spec, file) pairs to work on; file None: the model has nothing released."""
    if not args.all and not args.model:
        raise CitysegError('say which weights: --model M (repeatable) or --all; models: '
                           + ', '.join(model_names()))
    names = model_names() if args.all else list(dict.fromkeys(args.model))
    specs = [get_spec(name) for name in names]
    if args.file and len(specs) != 1:
        raise CitysegError('--file NAME needs exactly one --model')
    chosen = []
    for spec in specs:
        wf = spec.weights_for(args.file)
        if args.file and wf is None:
            released = ', '.join(w.filename for w in spec.weights) or 'none'
            raise ZooError(f'{args.file} is not a released file of {spec.name!r}; released: '
                           f'{released}')
        chosen.append((spec, wf))
    return chosen


def _unavailable(spec: ModelSpec, wf: Optional[WeightsFile], mirror: Optional[str]) -> str:
    """Why this model's file cannot be downloaded, or '' when it can."""
    if wf is None:
        return f'{spec.name}: no released weights (train it and pass --weights FILE)'
    if not wf.url and not mirror:
        return (f'{spec.name}: {wf.filename} has no download URL (use --mirror URL or copy it '
                'into the cache)')
    return ''


def run(args: argparse.Namespace) -> int:
    package_log = logging.getLogger('cityseg_ros')
    level = package_log.level
    if args.quiet:
        package_log.setLevel(logging.WARNING)
    try:
        return _run(args)
    finally:
        package_log.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    cache = (args.cache_dir or cache_dir()).expanduser()
    problem = file_problem(cache)
    if problem is None:
        raise ConfigError(f'cache directory {cache} is a file, not a directory; pass another '
                          '--cache-dir (or $CITYSEG_ROS_CACHE)')
    if problem not in ('not found', 'is a directory, not a file'):
        problem = problem.replace(', not a file', ', not a directory')
        raise ConfigError(f'cache directory {cache} {problem}; pass another --cache-dir (or '
                          '$CITYSEG_ROS_CACHE)')
    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    chosen = _selection(args)

    if args.verify:
        bad, again = [], []
        for spec, wf in chosen:
            if wf is None:
                print(f'{spec.name}: no released weights, nothing to verify')
                continue
            path = cache / wf.filename
            problem = check_file(path, wf)
            if problem:
                bad.append(f'{wf.filename} ({problem})')
                again.append(f'--model {spec.name}')
            else:
                print(f'{spec.name}: {path} ok')
        if bad:
            fix = ' '.join(dict.fromkeys(again)) + (f' --file {args.file}' if args.file else '')
            raise CitysegError(f'{len(bad)} weight file(s) bad or missing in {cache}: '
                               f'{", ".join(bad)}; run fetch_weights {fix}')
        return EXIT_OK

    # Check every request before downloading anything.
    skipped = [reason for reason in (_unavailable(s, w, mirror) for s, w in chosen) if reason]
    if skipped and not args.all:
        raise ZooError('; '.join(skipped))
    for reason in skipped:
        print(f'{reason}; skipped')
    for spec, wf in chosen:
        if not _unavailable(spec, wf, mirror):
            path = fetch(spec.name, wf.filename, cache=cache, mirror=mirror,
                         progress=not args.quiet, limits=_limits(args))
            print(f'{spec.name}: {path}')
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console-script entry point (``fetch_weights``)."""
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    raise SystemExit(main())
