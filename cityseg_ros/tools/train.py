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

r"""train: train or fine-tune any zoo model on a Cityscapes-layout folder.

Examples::

    train --model espnetv2 --data-root cityscapes --init-weights auto --out runs/espnet
    train --model sernet_former_r50 --data-root cityscapes --out runs/sernet \
        --backbone-weights resnet50-11ad3fa6.pth --steps 80000 --batch-size 8
    train --model sernet_former_r50 --data-root cityscapes --out runs/sernet --resume
    torchrun --nproc_per_node=4 -m cityseg_ros.tools.train --model hrnet_w48_ocr \
        --data-root cityscapes --init-weights auto --out runs/ocr --sync-bn

Writes ``last.pt`` (resumable training state), ``model.pth`` (load it with
``segment_images --model M --weights model.pth``), ``scalars.csv``, ``config.json`` and
``summary.json`` into ``--out``.
"""

import argparse
import logging
import os
from pathlib import Path
import sys
from typing import Optional, Sequence

from cityseg_ros.errors import ConfigError
from cityseg_ros.tools.common import EXIT_OK, run_cli
from cityseg_ros.tools.segment_images import parse_size
from cityseg_ros.training import OPTIMIZERS, PRECISIONS, TrainConfig, Trainer

__all__ = ['build_parser', 'config_from_args', 'run', 'main']


def build_parser() -> argparse.ArgumentParser:
    """Build the command line of ``train``."""
    defaults = TrainConfig(model='', data_root=Path(), out=Path())
    parser = argparse.ArgumentParser(
        prog='train',
        description='Train or fine-tune a zoo model on a Cityscapes-layout folder '
                    '(leftImg8bit/ + gtFine/ *_labelIds.png). Multi-GPU / multi-process: '
                    'torchrun --nproc_per_node=N -m cityseg_ros.tools.train ...',
        epilog='Outputs: last.pt (resume with --resume), model.pth (segment_images / evaluate '
               '/ the node load it with --weights), scalars.csv, config.json, summary.json.')
    req = parser.add_argument_group('required')
    req.add_argument('--model', required=True, metavar='M', help='zoo model name')
    req.add_argument('--data-root', required=True, type=Path, metavar='DIR',
                     help='Cityscapes folder holding leftImg8bit/ and gtFine/')
    req.add_argument('--out', required=True, type=Path, metavar='DIR',
                     help='output folder (created)')

    data = parser.add_argument_group('data and augmentation')
    data.add_argument('--split', default=defaults.split, help='training split (default: train)')
    data.add_argument('--val-split', default='auto', metavar='SPLIT',
                      help="validation split; 'auto' (default): val if it has ground truth; "
                           "'none': no validation")
    data.add_argument('--batch-size', type=int, default=defaults.batch_size,
                      help='images per step and process (default: %(default)s)')
    data.add_argument('--crop-size', type=parse_size, metavar='HxW',
                      help='training crop (default: min(base size, 512x1024))')
    data.add_argument('--base-size', type=parse_size, metavar='HxW',
                      help="size the image is fitted into at scale 1 (default: the model's "
                           'test size)')
    data.add_argument('--scale-range', type=float, nargs=2, metavar=('MIN', 'MAX'),
                      default=defaults.scale_range, help='random scale (default: 0.5 2.0)')
    data.add_argument('--no-flip', dest='flip', action='store_false', help='no random flips')
    data.add_argument('--no-jitter', dest='jitter', action='store_false',
                      help='no photometric jitter')
    data.add_argument('--workers', type=int, default=defaults.workers,
                      help='DataLoader processes per training process (default: %(default)s)')
    data.add_argument('--seed', type=int, default=defaults.seed,
                      help='seed of data order, augmentation and initialisation')

    opt = parser.add_argument_group('optimisation')
    opt.add_argument('--steps', type=int, default=defaults.steps,
                     help='optimiser steps in total (default: %(default)s)')
    opt.add_argument('--optimizer', default=defaults.optimizer, choices=OPTIMIZERS)
    opt.add_argument('--lr', type=float, help='base learning rate (default: SGD 0.01, AdamW 6e-5)')
    opt.add_argument('--momentum', type=float, default=defaults.momentum)
    opt.add_argument('--weight-decay', type=float,
                     help='on weights, not norms/biases (default: SGD 5e-4, AdamW 0.01)')
    opt.add_argument('--poly-power', type=float, default=defaults.poly_power)
    opt.add_argument('--warmup-steps', type=int, default=defaults.warmup_steps)
    opt.add_argument('--ohem', action='store_true', help='online hard example mining')
    opt.add_argument('--ohem-thresh', type=float, default=defaults.ohem_thresh)
    opt.add_argument('--ohem-min-kept', type=int, default=defaults.ohem_min_kept)
    opt.add_argument('--clip-grad', type=float, metavar='NORM', help='clip the gradient norm')
    opt.add_argument('--precision', default=defaults.precision, choices=PRECISIONS,
                     help='auto: fp16 + GradScaler on CUDA, fp32 on CPU')
    opt.add_argument('--device', default=defaults.device, help='auto, cpu, cuda or cuda:N')
    opt.add_argument('--channels-last', action='store_true', help='NHWC tensors')
    opt.add_argument('--sync-bn', action='store_true',
                     help='SyncBatchNorm across processes (CUDA, under torchrun)')
    opt.add_argument('--freeze-bn', action='store_true',
                     help='keep BatchNorm statistics fixed (fine-tuning with small batches)')

    weights = parser.add_argument_group('weights and resuming')
    weights.add_argument('--init-weights', metavar='PATH|auto',
                         help="fine-tune from this checkpoint of the model ('auto': the released "
                              'file in the cache, see fetch_weights)')
    weights.add_argument('--backbone-weights', metavar='PATH|auto',
                         help="ImageNet encoder weights (SERNet-Former: torchvision's "
                              'resnet50-11ad3fa6.pth / resnet101-cd907fc2.pth)')
    weights.add_argument('--resume', nargs='?', const='auto', metavar='PATH',
                         help='continue a run exactly (default PATH: OUT/last.pt)')
    weights.add_argument('--stop-at', type=int, metavar='STEP',
                         help='stop after this step (state saved; continue with --resume)')

    logs = parser.add_argument_group('validation and logging')
    logs.add_argument('--val-every', type=int, default=defaults.val_every,
                      help='validate every N steps (default: only at the end)')
    logs.add_argument('--val-size', type=parse_size, metavar='HxW',
                      help="validation input size (default: the model's test size)")
    logs.add_argument('--val-at-start', action='store_true',
                      help='also validate before the first step')
    logs.add_argument('--save-every', type=int, default=defaults.save_every,
                      help='write last.pt every N steps (default: %(default)s)')
    logs.add_argument('--log-every', type=int, default=defaults.log_every,
                      help='write scalars every N steps (default: %(default)s)')
    logs.add_argument('--tensorboard', action='store_true',
                      help='also write TensorBoard events (needs the tensorboard package)')
    logs.add_argument('--quiet', action='store_true', help='no progress bar')
    logs.add_argument('--verbose', action='store_true', help='debug logging')
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Turn parsed options into a :class:`~cityseg_ros.training.TrainConfig`."""
    val_split = None if args.val_split.lower() == 'none' else args.val_split
    return TrainConfig(
        model=args.model, data_root=args.data_root, out=args.out, split=args.split,
        val_split=val_split, steps=args.steps, batch_size=args.batch_size,
        crop_size=args.crop_size, base_size=args.base_size,
        scale_range=tuple(args.scale_range), flip=args.flip, jitter=args.jitter,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, poly_power=args.poly_power,
        warmup_steps=args.warmup_steps, ohem=args.ohem, ohem_thresh=args.ohem_thresh,
        ohem_min_kept=args.ohem_min_kept, clip_grad=args.clip_grad, precision=args.precision,
        device=args.device, channels_last=args.channels_last, sync_bn=args.sync_bn,
        freeze_bn=args.freeze_bn, workers=args.workers, seed=args.seed,
        init_weights=args.init_weights, backbone_weights=args.backbone_weights, resume=args.resume,
        val_every=args.val_every, val_size=args.val_size, val_at_start=args.val_at_start,
        save_every=args.save_every, log_every=args.log_every, tensorboard=args.tensorboard,
        progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    """Validate the options, train, and print one summary line (rank 0)."""
    rank = os.environ.get('RANK', '0')
    if rank != '0':
        logging.getLogger().setLevel(logging.WARNING)  # one voice per job
    if args.stop_at is not None and args.stop_at < 1:
        raise ConfigError(f'--stop-at must be a step >= 1, got {args.stop_at}')
    trainer = Trainer(config_from_args(args))
    result = trainer.run(stop_at=args.stop_at)
    if rank == '0':
        score = f', val mIoU {result.scores.miou:.4f}' if result.scores else ''
        print(f'{trainer.spec.name}: step {result.step}, loss {result.loss:.4f}{score}, '
              f'{result.seconds:.0f} s; wrote {result.model_file} and {result.checkpoint}')
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``train`` with ``argv`` (default: the command line); return the exit code."""
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
