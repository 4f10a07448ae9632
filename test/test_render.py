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

from cityseg_ros import render
from cityseg_ros.labels import CLASS_NAMES, PALETTE
import numpy as np
import pytest


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 19, (48, 80), dtype=np.uint8)
    lab[:5] = 255
    return lab


def test_colorize_uses_the_palette(labels):
    color = render.colorize(labels)
    assert color.shape == (48, 80, 3) and color.dtype == np.uint8
    assert (color == PALETTE[labels]).all()
    assert (color[:5] == 0).all()


def test_colorize_rejects_non_label_arrays():
    with pytest.raises(ValueError, match='uint8'):
        render.colorize(np.zeros((4, 4), np.int32))


def test_overlay_blends_and_keeps_photo_on_ignored_pixels(labels):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    out = render.overlay(photo, labels, alpha=0.25)
    expected = photo * 0.25 + PALETTE[labels] * 0.75
    assert np.abs(out[5:].astype(float) - expected[5:]).max() <= 1.0
    assert (out[:5] == photo[:5]).all()
    assert (render.overlay(photo, labels, alpha=1.0)[5:] == photo[5:]).all()


def test_overlay_rejects_size_mismatch_and_bad_alpha(labels):
    photo = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match='differ'):
        render.overlay(photo, labels)
    with pytest.raises(ValueError, match='alpha'):
        render.overlay(np.zeros((48, 80, 3), np.uint8), labels, alpha=1.5)


def test_legend_has_a_row_per_class():
    img = render.legend(row_height=20)
    assert img.shape[0] == 20 * len(CLASS_NAMES)
    assert (img[5, 5] == PALETTE[0]).all()


def test_colorize_and_overlay_follow_a_label_space():
    from cityseg_ros.label_spaces import get_label_space
    space = get_label_space('labelid')
    rng = np.random.default_rng(2)
    train_ids = rng.integers(0, 19, (16, 24), dtype=np.uint8)
    train_ids[:2] = 255
    ids = space.map(train_ids)
    color = render.colorize(ids, palette=space.palette)
    assert (color == space.palette[ids]).all()
    assert (color[2:] == PALETTE[train_ids[2:]]).all()  # same classes, same official colours
    photo = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    out = render.overlay(photo, ids, 0.5, palette=space.palette, ignore_id=space.ignore_id)
    assert (out[:2] == photo[:2]).all()  # labelId 0 ('unlabeled') shows the photo
    assert (render.overlay(photo, ids, 0.5, color=color, ignore_id=0) == out).all()
    blended = render.overlay(photo, ids, 0.5, palette=space.palette, ignore_id=None)
    assert (blended[:2] != photo[:2]).any()


def test_colorize_rejects_a_bad_palette(labels):
    with pytest.raises(ValueError, match='palette'):
        render.colorize(labels, palette=np.zeros((19, 3), np.uint8))


def test_legend_lists_a_label_space():
    from cityseg_ros.label_spaces import get_label_space
    space = get_label_space('category')
    img = render.legend(row_height=20, names=space.names, palette=space.palette)
    assert img.shape[0] == 20 * len(space.names)
    assert (img[25, 5] == space.palette[1]).all()  # row 1: 'flat'
