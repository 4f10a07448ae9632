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

"""Integer halving equals PyTorch's antialiased bilinear resize bit for bit, borders included."""

from cityseg_ros import preprocess
import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _torch_resize(image):
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    size = (image.shape[0] // 2, image.shape[1] // 2)
    return F.interpolate(x, size=size, mode='bilinear', align_corners=False, antialias=True)


@pytest.mark.parametrize('shape', [(1024, 2048), (1080, 1920), (8, 8), (10, 398), (482, 640)])
def test_halving_equals_the_antialiased_resize(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[:, :5] = 255
    image[-3:] = 0
    assert torch.equal(preprocess.halve_antialiased(image), _torch_resize(image))


@pytest.mark.parametrize('shape', [(9, 16, 3), (16, 9, 3), (6, 6, 3), (16, 16), (16, 16, 4)])
def test_odd_tiny_or_other_shapes_are_declined(shape):
    assert preprocess.halve_antialiased(np.zeros(shape, np.uint8)) is None
    assert preprocess.halve_antialiased(np.zeros((16, 16, 3), np.float32)) is None


def test_a_build_that_resizes_differently_is_detected(monkeypatch):
    monkeypatch.setattr(preprocess, '_verified', None)
    monkeypatch.setattr(preprocess, '_reference',
                        lambda image, size: F.interpolate(
                            torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[
                                None].float(), size=size, mode='bilinear'))  # no antialias
    assert preprocess.halve_antialiased(np.zeros((32, 32, 3), np.uint8) + 7) is None
