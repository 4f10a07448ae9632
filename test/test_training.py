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

"""Training library: augmentation, loss, schedule, sampler, and an exact resume on real data."""

import csv
import math
import random

from cityseg_ros.errors import CheckpointError, ConfigError, ImageError
from cityseg_ros.labels import IGNORE_ID
from cityseg_ros.models import build_model
from cityseg_ros.models.espnetv2 import EfficientPyrPool
from cityseg_ros.training import (_rng_state, _set_rng_state, augment, EpochSampler,
                                  find_frames, LAST_CHECKPOINT, load_training_state, MODEL_FILE,
                                  photometric_jitter, PolySchedule, SCALARS_FILE,
                                  SegmentationLoss, TrainConfig, Trainer, TrainSet)
import numpy as np
import pytest
import torch
import torch.nn.functional as F

REAL_FRAMES = ('aachen_000000_000019', 'aachen_000001_000019')


# Training steps on a shared 2-core machine: one OpenMP thread avoids barrier stalls.
pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _pair(h=96, w=160, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, (h, w), dtype=np.uint8)
    labels[:10] = IGNORE_ID
    return image, labels


# -- augmentation -----------------------------------------------------------------------------


def test_augment_is_a_pure_function_of_its_generator():
    image, labels = _pair()
    a = augment(image, labels, (96, 160), (64, 128), (0.5, 2.0), np.random.default_rng(7))
    b = augment(image, labels, (96, 160), (64, 128), (0.5, 2.0), np.random.default_rng(7))
    c = augment(image, labels, (96, 160), (64, 128), (0.5, 2.0), np.random.default_rng(8))
    assert a[0].shape == (64, 128, 3) and a[0].dtype == np.uint8
    assert a[1].shape == (64, 128) and a[1].dtype == np.uint8
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_augment_pads_small_scales_with_ignore_and_keeps_label_values():
    image, labels = _pair()
    out_image, out_labels = augment(image, labels, (48, 80), (64, 128), (1.0, 1.0),
                                    np.random.default_rng(0), flip=False, jitter=False)
    # 96x160 fitted into 48x80 is 48x80: the rest of the 64x128 crop is padding.
    assert (out_labels[48:] == IGNORE_ID).all() and (out_labels[:, 80:] == IGNORE_ID).all()
    assert (out_image[48:] == (124, 116, 104)).all()
    assert set(np.unique(out_labels)) <= set(np.unique(labels))


def test_flip_moves_image_and_labels_together():
    image, labels = _pair()
    flips = 0
    for seed in range(8):
        im, lb = augment(image, labels, (96, 160), (96, 160), (1.0, 1.0),
                         np.random.default_rng(seed), jitter=False)
        flipped = np.array_equal(lb, labels[:, ::-1])
        assert flipped or np.array_equal(lb, labels)
        assert np.array_equal(im, image[:, ::-1] if flipped else image)
        flips += flipped
    assert 0 < flips < 8


def test_photometric_jitter_keeps_shape_and_changes_colours():
    image, _ = _pair()
    outs = [photometric_jitter(image, np.random.default_rng(s)) for s in range(4)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


# -- loss, schedule, sampler ------------------------------------------------------------------


def test_loss_is_cross_entropy_over_19_channels_at_label_size():
    torch.manual_seed(0)
    logits = torch.randn(2, 20, 8, 16)
    labels = torch.randint(0, 19, (2, 32, 64))
    labels[:, :4] = IGNORE_ID
    loss = SegmentationLoss(align_corners=True)(logits, labels)
    up = F.interpolate(logits[:, :19], size=(32, 64), mode='bilinear', align_corners=True)
    assert torch.allclose(loss, F.cross_entropy(up, labels, ignore_index=IGNORE_ID))


def test_loss_of_an_all_ignored_crop_is_zero_with_a_gradient():
    logits = torch.randn(1, 19, 4, 4, requires_grad=True)
    loss = SegmentationLoss(align_corners=False)(logits, torch.full((1, 4, 4), IGNORE_ID))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_ohem_keeps_only_hard_pixels_but_at_least_min_kept():
    torch.manual_seed(0)
    labels = torch.randint(0, 19, (1, 16, 16))
    logits = F.one_hot(labels, 19).permute(0, 3, 1, 2).float() * 10  # all easy ...
    logits[..., :2, :] = torch.randn(1, 19, 2, 16)  # ... but two rows
    plain = SegmentationLoss(False)(logits, labels)
    ohem = SegmentationLoss(False, ohem=True, thresh=0.7, min_kept=8)(logits, labels)
    assert ohem > plain  # the easy pixels no longer dilute the mean
    per_pixel = F.cross_entropy(logits, labels, reduction='none')
    assert torch.isclose(ohem, per_pixel[:, :2].mean(), rtol=1e-4)


def test_poly_schedule_with_warmup():
    poly = PolySchedule(100, power=0.9, warmup_steps=10)
    assert poly(0) == pytest.approx(1e-3)
    assert poly(5) == pytest.approx((1e-3 + (1 - 1e-3) * 0.5) * 0.95 ** 0.9)
    assert poly(50) == pytest.approx(0.5 ** 0.9)
    assert poly(100) == 0.0


def test_sampler_shards_epochs_and_resumes_mid_epoch():
    dataset = list(range(10))
    ranks = [EpochSampler(dataset, 2, r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    shards = [list(s) for s in ranks]
    assert all(20 <= i < 30 for shard in shards for i in shard)  # epoch 2 travels in the index
    assert sorted(shards[0] + shards[1]) == list(range(20, 30))
    ranks[0].start = 3
    assert list(ranks[0]) == shards[0][3:] and len(ranks[0]) == 2


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    torch.save(_rng_state(), tmp_path / 'rng.pt')
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    _set_rng_state(torch.load(tmp_path / 'rng.pt', weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


# -- ESPNetv2 in training mode ----------------------------------------------------------------


def test_espnetv2_pyramid_trains_its_merge_batchnorm():
    model = build_model('espnetv2').train()
    pool = model.bu_dec_l1
    bn = pool.merge_layer[0].br[0]
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 128)).sum().backward()
    assert not torch.equal(bn.running_mean, before)  # batch statistics were used and tracked
    assert bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0


def test_espnetv2_training_path_equals_the_fast_path_on_running_statistics():
    torch.manual_seed(0)
    pool = EfficientPyrPool(64, 10, 48).eval()
    for m in pool.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    levels = [torch.randn(2, 10, 16, 32) for _ in pool.scales]
    with torch.no_grad():
        assert torch.allclose(pool._merge(levels), pool._merge_concat(levels), atol=1e-5)


# -- inputs and errors ------------------------------------------------------------------------


def _synthetic_root(root, frames=2, size=(64, 128)):
    from cityseg_ros.imageio import write_png
    rng = np.random.default_rng(0)
    for i in range(frames):
        stem = f'city_{i:06d}_000019'
        for folder, suffix, shape, high in (('leftImg8bit', 'leftImg8bit', (*size, 3), 256),
                                            ('gtFine', 'gtFine_labelIds', size, 34)):
            path = root / folder / 'train' / 'city' / f'{stem}_{suffix}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png(path, rng.integers(0, high, shape, dtype=np.uint8))
    return root


def test_find_frames_explains_missing_folders_and_labels(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        find_frames(tmp_path / 'nowhere', 'train')
    root = _synthetic_root(tmp_path / 'cs')
    with pytest.raises(ConfigError, match="split 'val' not found.*splits present: train"):
        find_frames(root, 'val')
    assert len(find_frames(root, 'train')) == 2
    next((root / 'gtFine').rglob('*.png')).unlink()
    with pytest.raises(ImageError, match='labelIds'):
        find_frames(root, 'train')


def test_trainer_refuses_to_overwrite_a_run_and_bad_resume_files(tmp_path):
    root = _synthetic_root(tmp_path / 'cs')
    out = tmp_path / 'run'
    out.mkdir()
    (out / LAST_CHECKPOINT).write_bytes(b'')
    with pytest.raises(ConfigError, match='--resume'):
        Trainer(TrainConfig('espnetv2', root, out, batch_size=1, device='cpu'))
    torch.save({'weight': torch.zeros(1)}, out / LAST_CHECKPOINT)
    with pytest.raises(CheckpointError, match='not a training checkpoint'):
        load_training_state(out / LAST_CHECKPOINT)
    with pytest.raises(ConfigError, match='cannot fill one step'):
        Trainer(TrainConfig('espnetv2', root, tmp_path / 'x', batch_size=4, device='cpu'))
    with pytest.raises(CheckpointError, match='no released weights'):
        Trainer(TrainConfig('sernet_former_r50', root, tmp_path / 'y', batch_size=1,
                            init_weights='auto'))
    with pytest.raises(ConfigError, match='no separate ImageNet backbone'):
        Trainer(TrainConfig('espnetv2', root, tmp_path / 'z', batch_size=1,
                            backbone_weights='auto'))


def test_dataset_epochs_give_different_crops_of_the_same_frame(tmp_path):
    root = _synthetic_root(tmp_path / 'cs', size=(96, 160))
    ds = TrainSet(find_frames(root, 'train'), (96, 160), (64, 128), (0.5, 2.0), seed=0)
    first, again, next_epoch = ds[1], ds[1], ds[1 + len(ds)]
    assert torch.equal(first[0], again[0])
    assert not torch.equal(first[0], next_epoch[0])


def test_freeze_bn_trains_weights_but_keeps_the_statistics(tmp_path):
    root = _synthetic_root(tmp_path / 'cs', size=(64, 128))
    out = tmp_path / 'run'
    Trainer(TrainConfig('espnetv2', root, out, val_split=None, steps=1, batch_size=2,
                        crop_size=(64, 128), base_size=(64, 128), freeze_bn=True, device='cpu',
                        workers=0, progress=False)).run()
    trained = torch.load(out / MODEL_FILE, weights_only=True)
    torch.manual_seed(0)  # the trainer's initialisation (seed 0)
    initial = build_model('espnetv2').state_dict()
    stats = [k for k in initial if k.endswith(('running_mean', 'running_var'))]
    assert stats and all(torch.equal(trained[k], initial[k]) for k in stats)
    assert not torch.equal(trained['bu_dec_l4.merge_layer.3.weight'],
                           initial['bu_dec_l4.merge_layer.3.weight'])


# -- exact resume on real frames --------------------------------------------------------------


def _two_real_frames(cityscapes_root, root):
    for stem in REAL_FRAMES:
        for folder, suffix in (('leftImg8bit', 'leftImg8bit'), ('gtFine', 'gtFine_labelIds')):
            src = cityscapes_root / folder / 'train' / 'aachen' / f'{stem}_{suffix}.png'
            dst = root / folder / 'train' / 'aachen' / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    return root


def _losses(out) -> dict:
    with open(out / SCALARS_FILE, newline='') as fh:
        return {int(r['step']): float(r['value']) for r in csv.DictReader(fh)
                if r['tag'] == 'train/loss'}


def test_resume_continues_exactly_on_real_frames(tmp_path, cityscapes_root):
    root = _two_real_frames(cityscapes_root, tmp_path / 'cs')

    def config(out, resume=None):
        # A 4-step SGD run over 2 frames: 2 epochs, so the resume crosses into a new epoch's
        # data order mid-way and the poly schedule is at a non-trivial point.
        return TrainConfig('espnetv2', root, out, val_split=None, steps=4, batch_size=1,
                           base_size=(128, 256), crop_size=(64, 128), device='cpu', workers=0,
                           log_every=1, save_every=100, seed=5, progress=False, resume=resume)

    whole = Trainer(config(tmp_path / 'whole')).run()
    first = Trainer(config(tmp_path / 'split')).run(stop_at=3)
    assert first.step == 3 and (tmp_path / 'split' / LAST_CHECKPOINT).is_file()
    state = load_training_state(tmp_path / 'split' / LAST_CHECKPOINT)  # weights_only=True
    assert state['step'] == 3 and state['data']['epoch'] == 1
    second = Trainer(config(tmp_path / 'split', resume='auto')).run()
    assert whole.step == second.step == 4

    expected, resumed = _losses(tmp_path / 'whole'), _losses(tmp_path / 'split')
    assert sorted(resumed) == [1, 2, 3, 4]
    assert math.isfinite(expected[4])
    assert resumed[4] == pytest.approx(expected[4], abs=1e-6)
    a = torch.load(tmp_path / 'whole' / MODEL_FILE, weights_only=True)
    b = torch.load(tmp_path / 'split' / MODEL_FILE, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
