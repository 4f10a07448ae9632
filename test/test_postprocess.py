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

"""The label shortcut equals upsample-every-channel + argmax + nearest, bit for bit."""

from cityseg_ros import postprocess
from cityseg_ros.postprocess import LabelMaker, LruCache
import numpy as np
import pytest
import torch
import torch.nn.functional as F


def _logits(h: int, w: int, classes: int = 20, seed: int = 0, layout: str = 'slice',
            noise: float = 0.3, cell: int = 8):
    """Smooth class regions (like a network's) with noise; ``slice`` = 19 of 20 NHWC channels."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, max(2, h // cell), max(2, w // cell), generator=gen) * 6
    x = F.interpolate(coarse, (h, w), mode='bilinear', align_corners=False)
    x = x + noise * torch.randn(1, classes, h, w, generator=gen)
    if layout == 'slice':
        return x.contiguous(memory_format=torch.channels_last)[:, :19]
    if layout == 'nhwc19':
        return x[:, :19].contiguous(memory_format=torch.channels_last)
    return x[:, :19].contiguous()


def _nearest(n_src: int, n_dst: int) -> torch.Tensor:
    # Pixel-centre nearest neighbour (the engine's mapping; any index set works here).
    return torch.clamp(((torch.arange(n_dst) + 0.5) * n_src / n_dst).long(), max=n_src - 1)


def _reference(logits, size, rows, cols):
    """Today's path, written out plainly: upsample all channels, argmax / softmax, pick."""
    scores = F.interpolate(logits, size=size, mode='bilinear', align_corners=True)
    labels = scores.argmax(dim=1)[0][rows][:, cols].to(torch.uint8).numpy()
    conf, conf_labels = scores.softmax(dim=1).max(dim=1)
    conf = (conf[0][rows][:, cols] * 255.0).round().to(torch.uint8).numpy()
    return labels, conf_labels[0][rows][:, cols].to(torch.uint8).numpy(), conf


@pytest.mark.parametrize('h, w, size, camera', [
    (32, 64, (64, 128), (128, 256)),     # EdgeNets: 2x to the network size, 2x to the camera
    (33, 65, (66, 130), (100, 170)),     # odd sizes, non-integer camera ratio
    (32, 64, (64, 128), (50, 90)),       # camera smaller than the network input
    (17, 23, (17, 23), (40, 60)),        # no upsampling at all
    (20, 30, (77, 101), (77, 101)),      # larger factor
])
@pytest.mark.parametrize('layout', ['slice', 'nchw', 'nhwc19'])
def test_labels_equal_upsample_argmax_nearest(h, w, size, camera, layout):
    logits = _logits(h, w, layout=layout)
    rows, cols = _nearest(size[0], camera[0]), _nearest(size[1], camera[1])
    labels, conf_labels, conf = _reference(logits, size, rows, cols)
    with torch.inference_mode():
        ours, ours_conf = LabelMaker()(logits, size, rows, cols, confidence=True)
        plain, _ = LabelMaker()(logits, size, rows, cols)
    assert ours.dtype == np.uint8 and ours.shape == camera
    assert np.array_equal(ours, labels) and np.array_equal(plain, labels)
    assert np.array_equal(ours, conf_labels)
    diff = np.abs(ours_conf.astype(int) - conf)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_ties_and_near_ties_take_the_first_maximum():
    logits = _logits(24, 40, seed=1, layout='nchw')
    # Exact ties between classes 2 and 7, and a 1-ulp lead of class 9 over class 4, on whole
    # regions: the shortcut may not decide those cells, the exact path keeps argmax's rule.
    logits[:, 7, 5:12, 5:20] = logits[:, 2, 5:12, 5:20] = 30.0
    logits[:, 4, 14:20, 10:30] = 30.0
    logits[:, 9, 14:20, 10:30] = torch.nextafter(torch.tensor(30.0), torch.tensor(40.0))
    size, camera = (48, 80), (96, 160)
    rows, cols = _nearest(size[0], camera[0]), _nearest(size[1], camera[1])
    labels, _, _ = _reference(logits, size, rows, cols)
    ours, _ = LabelMaker()(logits, size, rows, cols)
    assert np.array_equal(ours, labels)
    assert labels[34, 50] == 2 and labels[68, 80] == 9  # the tie / near-tie regions' centres


def test_a_build_with_other_arithmetic_falls_back_to_the_plain_path(monkeypatch):
    exact = postprocess._interpolate_at
    monkeypatch.setattr(postprocess, '_interpolate_at',
                        lambda *a: exact(*a) * (1 + 2 ** -20))  # not bit-identical any more
    maker = LabelMaker()
    logits = _logits(32, 64)
    rows, cols = _nearest(64, 128), _nearest(128, 256)
    ours, _ = maker(logits, (64, 128), rows, cols)
    assert not maker._exact_ok(logits, (64, 128))
    assert np.array_equal(ours, _reference(logits, (64, 128), rows, cols)[0])


def test_undecided_cells_are_few_on_smooth_logits(monkeypatch):
    # The point of the shortcut: only class borders are interpolated.
    calls = []
    exact = postprocess._interpolate_at
    monkeypatch.setattr(postprocess, '_interpolate_at',
                        lambda pixels, width, rows, cols, i, j: calls.append(len(i)) or exact(
                            pixels, width, rows, cols, i, j))
    maker = LabelMaker()
    maker._exact_ok = lambda logits, size: True
    logits = _logits(128, 256, noise=0.0, cell=32)
    maker(logits, (256, 512), _nearest(256, 512), _nearest(512, 1024))
    assert 0 < sum(calls) < 0.1 * 256 * 512


def test_lru_cache_keeps_the_most_recent_entries():
    cache = LruCache(3)
    made = []
    for key in [1, 2, 3, 1, 4, 5, 1]:
        cache.get(key, lambda key=key: made.append(key) or key * 10)
    assert len(cache) == 3
    assert made == [1, 2, 3, 4, 5]  # 1 stayed in use, so it was never made again
    assert cache.get(1, lambda: None) == 10
    with pytest.raises(ValueError):
        LruCache(0)


def test_label_maker_caches_stay_bounded():
    maker = LabelMaker(cache_size=2)
    for side in range(16, 40):
        logits = _logits(side, side + 3, layout='nchw')
        maker(logits, (2 * side, 2 * side + 6), _nearest(2 * side, side),
              _nearest(2 * side + 6, side))
    assert len(maker._checked) <= 2 and len(maker._axes) <= 4
