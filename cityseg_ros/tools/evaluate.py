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

"""evaluate: score a model (or recorded predictions) on a bag's GT with the official metrics.

Examples::

    evaluate --bag cityscapes_val --model espnetv2 --weights auto --out eval/
    evaluate --bag recorded --predictions-topic /stereo/left/semantic/labels --out eval/
    evaluate --bag cityscapes_val --shard 0/2 --out eval_0/     # on machine A
    evaluate --bag cityscapes_val --shard 1/2 --out eval_1/     # on machine B
    evaluate merge --out eval/ eval_0/ eval_1/

Writes ``metrics.json``, ``report.md``, ``confusion.png``, ``frames.csv`` and ``counts.npz``
into ``--out``. A damaged bag still gets them, for the frames scored before the damage
(``partial: true``), and exits 2.
"""

import argparse
import logging
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.bags import TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS, TOPIC_LEFT_IMAGE
from cityseg_ros.errors import BagError, CitysegError, ConfigError
from cityseg_ros.evaluation import (BagEvaluator, check_output_folder, EvalOptions, Evaluation,
                                    load_evaluation, MAX_TOLERANCE_NS, merge_evaluations,
                                    OUTPUT_FILES, write_outputs)
from cityseg_ros.label_spaces import LABEL_SPACES
from cityseg_ros.tools.common import EXIT_OK, run_cli
from cityseg_ros.tools.segment_images import add_model_arguments, segmenter_from_args
import cv2

__all__ = ['build_parser', 'run', 'main', 'parse_shard']


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``i/n`` (e.g. ``0/2``) into (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split('/'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not i/n, e.g. 0/2') from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f'shard {text} does not exist: use i/n with '
                                         '0 <= i < n')
    if count >= 2**63:  # metrics.json records it, and merge reads it back as an int64
        raise argparse.ArgumentTypeError(f'shard {text}: n must be below 2**63')
    return index, count


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of ``evaluate`` (``evaluate merge ...`` is ``--merge``)."""
    parser = argparse.ArgumentParser(
        prog='evaluate',
        description='Score a model on a bag (or labels recorded in it) against its Cityscapes '
                    'ground truth. Merge shards with: evaluate merge --out DIR SHARD_DIR...',
        epilog='Outputs: ' + ', '.join(OUTPUT_FILES) + '.')
    parser.add_argument('--bag', type=Path, metavar='BAG',
                        help='rosbag2 directory or .mcap/.db3 file (make_bag writes one)')
    parser.add_argument('--out', type=Path, required=True, metavar='DIR',
                        help='output folder (created; files in it are replaced)')
    add_model_arguments(parser)
    topics = parser.add_argument_group('topics')
    topics.add_argument('--left-topic', default=TOPIC_LEFT_IMAGE, metavar='TOPIC',
                        help='camera images to segment, Image or CompressedImage; when absent, '
                             'TOPIC/compressed is read (default: %(default)s)')
    topics.add_argument('--gt-topic', default=TOPIC_GT_LABEL_IDS, metavar='TOPIC',
                        help='mono8 GT labelIds (default: %(default)s)')
    topics.add_argument('--instance-topic', default=None, metavar='TOPIC',
                        help=f'mono16 GT instanceIds for iIoU (default: {TOPIC_GT_INSTANCE_IDS};'
                             ' when the default is absent, iIoU is left undefined)')
    topics.add_argument('--no-instances', action='store_true',
                        help='do not read instance ids (iIoU undefined)')
    topics.add_argument('--predictions-topic', metavar='TOPIC',
                        help='score the mono8 labels recorded on TOPIC (Image, or PNG '
                             'CompressedImage such as .../semantic/labels/compressed) instead '
                             'of running a model (the model options are then ignored)')
    topics.add_argument('--label-space', default='trainid', choices=LABEL_SPACES,
                        help='the ids the labels carry and the classes scored: trainid and '
                             'labelid give the official scores, category the official '
                             'category scores, label_map the classes of --label-map; the '
                             'trainIds of a model are mapped into it (default: %(default)s)')
    topics.add_argument('--label-map', default='', metavar='FILE.yaml',
                        help='a label map (config/label_map_example.yaml): the predictions '
                             'carry its ids, the GT is mapped the same way, its classes are '
                             'scored')
    topics.add_argument('--tolerance-ms', type=float, default=10.0, metavar='MS',
                        help='largest stamp difference between a frame and its GT '
                             '(default: %(default)g)')
    part = parser.add_argument_group('what to evaluate')
    part.add_argument('--limit', type=int, metavar='N',
                      help='only the first N frames with GT (before sharding)')
    part.add_argument('--shard', type=parse_shard, default=(0, 1), metavar='i/n',
                      help='evaluate frames k with k %% n == i; merge the shards afterwards')
    part.add_argument('--batch-size', type=int, default=1, metavar='N',
                      help='images per forward pass (default: %(default)s)')
    parser.add_argument('--merge', action='store_true',
                        help='merge the counts.npz of the SHARD_DIRs into --out instead of '
                             'evaluating a bag (also: evaluate merge ...)')
    parser.add_argument('shard_dirs', nargs='*', type=Path, metavar='SHARD_DIR',
                        help='with --merge: output folders of evaluate runs')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    return parser


def _summary(evaluation: Evaluation, out: Path) -> str:
    scores = evaluation.space_scores()

    def fmt(value: float) -> str:
        return 'n/a' if value != value else f'{value:.4f}'

    fps = evaluation.frames_per_s
    return (f'{evaluation.counts.frames} frame(s) scored, {len(evaluation.skipped)} skipped: '
            f'mIoU {fmt(scores.miou)}, iIoU {fmt(scores.iiou)}, category mIoU '
            f'{fmt(scores.miou_category)}, category iIoU {fmt(scores.iiou_category)}; '
            f'{"n/a" if fps != fps else f"{fps:.2f}"} frames/s; wrote {out}/'
            f'{{{",".join(OUTPUT_FILES)}}}')


def _options(args: argparse.Namespace) -> EvalOptions:
    instance_topic = None if args.no_instances else (args.instance_topic
                                                     or TOPIC_GT_INSTANCE_IDS)
    if not 0 <= args.tolerance_ms <= MAX_TOLERANCE_NS / 1e6:
        raise ConfigError(f'--tolerance-ms must be 0..{MAX_TOLERANCE_NS / 1e6:g} (ms), got '
                          f'{args.tolerance_ms}')
    return EvalOptions(
        left_topic=args.left_topic, gt_topic=args.gt_topic, instance_topic=instance_topic,
        require_instances=args.instance_topic is not None,
        predictions_topic=args.predictions_topic, limit=args.limit, shard=args.shard,
        batch_size=args.batch_size, tolerance_ns=round(args.tolerance_ms * 1e6),
        label_space=args.label_space, label_map=args.label_map)


def _run_merge(args: argparse.Namespace) -> int:
    if args.bag is not None:
        raise ConfigError('--merge takes shard folders, not --bag; run the shards first')
    if not args.shard_dirs:
        raise ConfigError('--merge needs the output folders of the shards: '
                          'evaluate merge --out DIR SHARD_DIR...')
    out = args.out.resolve()
    folders = [d.resolve().parent if d.name == 'counts.npz' else d.resolve()
               for d in args.shard_dirs]
    if out in folders:
        raise ConfigError(f'--out {args.out} is one of the shard folders; write the merge to '
                          'a new folder')
    twice = sorted({str(d) for d in folders if folders.count(d) > 1})
    if twice:
        raise ConfigError(f'{", ".join(twice)} given more than once; pass each shard folder '
                          'once')
    check_output_folder(args.out)
    merged = merge_evaluations([load_evaluation(d) for d in args.shard_dirs])
    write_outputs(merged, args.out)
    print(_summary(merged, args.out))
    if merged.partial:
        print(f'warning: the merge is partial: {" ".join(str(merged.error).split())}',
              file=sys.stderr)
    return EXIT_OK


def _quiet_logs(verbose: bool) -> None:
    """On stderr only warnings (one error line on failure); -v shows the library's info."""
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
    # OpenCV logs corrupt JPEG/PNG data on stderr by itself; the error says it in one line.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def run(args: argparse.Namespace) -> int:
    """Validate the options and the bag, load the model, evaluate and write the outputs."""
    _quiet_logs(args.verbose)
    if args.merge:
        return _run_merge(args)
    if args.shard_dirs:
        raise ConfigError(f'unexpected argument(s) {" ".join(map(str, args.shard_dirs))}; '
                          'shard folders are only taken by evaluate merge')
    if args.bag is None:
        raise ConfigError('--bag is required (or use: evaluate merge --out DIR SHARD_DIR...)')
    if not args.bag.exists():
        raise BagError(f'--bag {args.bag} does not exist; pass a rosbag2 directory or a '
                       '.mcap/.db3 file (make_bag writes one from Cityscapes)')
    if args.predictions_topic is not None and not args.predictions_topic.strip():
        raise ConfigError('--predictions-topic is empty; pass the labels topic, e.g. '
                          '/stereo/left/semantic/labels')
    evaluator = BagEvaluator(args.bag, _options(args))
    check_output_folder(args.out, create=True)
    try:
        evaluator.check()  # the topics, before spending time on loading a model
        segmenter = None if args.predictions_topic else segmenter_from_args(args)
        evaluation = _evaluate(evaluator, segmenter, args.quiet)
    except (CitysegError, KeyboardInterrupt) as exc:
        if not evaluator.evaluation.partial:  # failed before reading: nothing to write
            raise
        write_outputs(evaluator.evaluation, args.out)
        if isinstance(exc, KeyboardInterrupt):
            raise
        frames = evaluator.evaluation.counts.frames
        done = (f'the {frames} frame(s) scored before it are in {args.out}' if frames else
                f'nothing was scored; {args.out}/metrics.json says so')
        raise type(exc)(f'{evaluator.evaluation.error}; {done} (partial: true)') from exc
    write_outputs(evaluation, args.out)
    if not evaluation.counts.frames and (evaluation.shard == (0, 1)
                                         or not evaluator.matched_frames):
        skipped = len(evaluation.skipped)
        topics = ', '.join(t for t in evaluation.topics.values() if t)
        why = (f'{skipped} were skipped (reasons in {args.out}/metrics.json)' if skipped
               else f'it holds no messages on {topics}')
        raise BagError(f'no frame of {args.bag} could be scored: {why}')
    print(_summary(evaluation, args.out))
    return EXIT_OK


def _evaluate(evaluator: BagEvaluator, segmenter, quiet: bool) -> Evaluation:
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, CI).
    with tqdm(total=evaluator.expected_frames, unit='frame', desc='evaluate',
              disable=True if quiet else None, file=sys.stderr, dynamic_ncols=True) as bar:
        def advance(_row) -> None:
            bar.update()
            bar.set_postfix(mIoU=f'{evaluator.evaluation.scores.miou:.3f}', refresh=False)
        return evaluator.run(segmenter, on_frame=advance)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point; ``evaluate merge ...`` is ``evaluate --merge ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'merge':
        argv[0] = '--merge'
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
