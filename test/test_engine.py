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

import dataclasses

from cityseg_ros.engine import Prediction, resolve_device, Segmenter
from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.labels import label_ids_to_train_ids
from cityseg_ros.models.zoo import IMAGENET_MEAN, IMAGENET_STD
import cv2
import numpy as np
from PIL import Image
import pytest
import torch
import torch.nn.functional as F

SMALL = (64, 128)


@pytest.fixture(scope='module')
def seg():
    torch.manual_seed(0)
    return Segmenter('espnetv2', weights=None, device='cpu', input_size=SMALL)


def _images(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]


def test_labels_come_back_at_each_input_size(seg):
    images = _images((72, 136), (64, 128), (72, 136), (100, 50))
    preds = seg.predict(images, confidence=True)
    assert [p.labels.shape for p in preds] == [im.shape[:2] for im in images]
    for p in preds:
        assert isinstance(p, Prediction)
        assert p.labels.dtype == np.uint8 and p.labels.max() < 19
        assert p.confidence.dtype == np.uint8 and p.confidence.shape == p.labels.shape
    # A batch gives the same result as one image at a time.
    alone = seg(images[2:3])[0]
    assert (alone == preds[2].labels).all()


def test_untrained_channel_19_is_never_output():
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=SMALL)
    with torch.no_grad():
        seg.net.bu_dec_l4.merge_layer[3].bias[19] = 1e4
    labels = seg(_images((64, 128)))[0]
    assert labels.max() < 19


def test_confidence_is_max_softmax_times_255(seg):
    image = _images((64, 128))
    pred = seg.predict(image, confidence=True)[0]
    with torch.inference_mode():
        probs = seg.forward(seg.preprocess(image)).softmax(1)
    expected = (probs.max(1).values[0] * 255).round().to(torch.uint8).numpy()
    assert np.abs(pred.confidence.astype(int) - expected).max() <= 1
    assert (pred.labels == probs.argmax(1)[0].numpy()).all()


@pytest.mark.parametrize('tta', ['flip', 'multiscale'])
def test_tta_modes_run_and_keep_shapes(tta):
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=SMALL, tta=tta)
    image = _images((80, 160))
    pred = seg.predict(image, confidence=True)[0]
    assert pred.labels.shape == (80, 160) and pred.confidence.max() <= 255


def test_flip_tta_is_mirror_symmetric():
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=SMALL, tta='flip')
    image = _images((64, 128))[0]
    with torch.inference_mode():
        scores = seg.scores(seg.to_device([image]))
        mirrored = seg.scores(seg.to_device([np.ascontiguousarray(image[:, ::-1])]))
    torch.testing.assert_close(scores, mirrored.flip(-1), rtol=1e-4, atol=1e-4)


def test_preprocessing_matches_the_reference_pil_pipeline(seg):
    # EdgeNets' test script: PIL bilinear resize, to_tensor, normalize with ImageNet stats.
    image = _images((128, 256))[0]
    ours = seg.preprocess([image])[0].numpy()
    resized = np.asarray(Image.fromarray(image).resize((SMALL[1], SMALL[0]), Image.BILINEAR))
    ref = (resized.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    # PIL resizes in 8-bit fixed point and rounds; ours stays float: about a grey level apart.
    diff = np.abs(ours.transpose(1, 2, 0) - ref) * min(IMAGENET_STD)
    assert diff.max() <= 1.5 and diff.mean() <= 0.5


def test_label_resize_is_pixel_centre_nearest(seg):
    src = np.random.default_rng(3).integers(0, 19, (64, 128), dtype=np.uint8)
    for dst in [(1024, 2048), (1080, 1920), (50, 70), (37, 300)]:
        rows, cols = seg._nearest_index(src.shape, dst)
        ours = torch.from_numpy(src)[rows][:, cols].numpy()
        pil = np.asarray(Image.fromarray(src).resize((dst[1], dst[0]), Image.NEAREST))
        exact = cv2.resize(src, (dst[1], dst[0]), interpolation=cv2.INTER_NEAREST_EXACT)
        assert (ours == pil).all() and (ours == exact).all(), dst


@pytest.mark.parametrize('kwargs, match', [
    ({'precision': 'fp16'}, 'CUDA'),
    ({'precision': 'int8'}, 'precision'),
    ({'tta': 'sometimes'}, 'tta'),
    ({'device': 'tpu'}, 'device'),
    ({'input_size': (4, 4)}, 'input size'),
])
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Segmenter('espnetv2', weights=None, device=kwargs.pop('device', 'cpu'), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the no-CUDA error path')
def test_cuda_without_gpu_says_so():
    with pytest.raises(ConfigError, match='CUDA is not available'):
        resolve_device('cuda')


@pytest.mark.parametrize('image, match', [
    (np.zeros((64, 64, 3), np.uint16), '8-bit'),
    (np.zeros((64, 64), np.uint8), 'HxWx3'),
    (np.zeros((1, 1, 3), np.uint8), 'smallest'),
    ([[0, 0, 0]], 'numpy'),
])
def test_bad_images_raise_image_error(seg, image, match):
    with pytest.raises(ImageError, match=match):
        seg.predict([image])


def test_input_size_is_rounded_to_the_model_divisor():
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=(70, 130))
    assert seg.input_size == (96, 160)


def test_official_weights_on_the_tiny_frame(shared):
    root = shared('data', 'cityscapes_tiny')
    weights = shared('data', 'weights', 'espnetv2', 'espnetv2_s_2.0_city_512x256.pth')
    image = cv2.cvtColor(cv2.imread(str(next(root.rglob('*_leftImg8bit.png')))),
                         cv2.COLOR_BGR2RGB)
    gt = label_ids_to_train_ids(cv2.imread(str(next(root.rglob('*_labelIds.png'))), 0))
    seg = Segmenter('espnetv2', weights=str(weights), device='cpu')
    assert seg.input_size == (256, 512)  # the zoo knows this file's test size
    labels = seg([image])[0]
    valid = gt != 255
    accuracy = (labels[valid] == gt[valid]).mean()
    assert accuracy > 0.75, accuracy


@pytest.mark.parametrize('resize, image, expected', [
    ('fixed', (1080, 1920), (512, 1024)),
    ('fit', (1024, 2048), (1024, 2048)),
    ('fit', (1080, 1920), (1024, 1820)),      # mmcv.imrescale to fit 2048x1024
    ('long_side', (1080, 1920), (1152, 2048)),  # HRNet: long side = base_size 2048
    ('long_side', (2048, 1536), (2048, 1536)),  # portrait: the height is the long side
    ('long_side', (512, 1024), (1024, 2048)),
])
def test_net_size_follows_the_model_protocol(monkeypatch, seg, resize, image, expected):
    spec = dataclasses.replace(seg.spec, resize=resize, size_divisor=1)
    monkeypatch.setattr(seg, 'spec', spec)
    monkeypatch.setattr(seg, 'input_size', (512, 1024) if resize == 'fixed' else (1024, 2048))
    assert seg.net_size(*image) == expected


def test_scales_above_one_are_tiled_with_a_stride_of_one_crop(monkeypatch, seg):
    x = seg.preprocess(_images((64, 128)))
    whole = seg.forward(x)
    calls = []

    def forward(crop):
        calls.append(tuple(crop.shape[-2:]))
        return whole[..., :, :crop.shape[-1]] * 0 + len(calls)  # crop k scores k everywhere
    monkeypatch.setattr(seg, 'spec', dataclasses.replace(seg.spec, crop_size=(64, 48)))
    tiled = seg._windows(x, True, forward)
    assert calls == [(64, 48), (64, 48), (64, 48)]  # lefts 0, 48 and 80 (shifted back)
    assert tiled.shape == whole.shape
    # Columns 80..95 are covered by crops 2 and 3: their scores are averaged.
    assert tiled[0, 0, 0, 0] == 1 and tiled[0, 0, 0, 90] == 2.5 and tiled[0, 0, 0, 127] == 3
    calls.clear()
    seg._windows(x, False, forward)
    assert calls == [(64, 128)]  # scales <= 1 run whole, whatever the crop


@pytest.mark.parametrize('merge', ['exp', 'softmax', 'logits'])
def test_flip_merge_follows_the_model_protocol(monkeypatch, merge):
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=SMALL, tta='flip')
    monkeypatch.setattr(seg, 'spec', dataclasses.replace(seg.spec, tta_merge=merge))
    image = seg.to_device(_images((64, 128)))
    with torch.inference_mode():
        x = seg.preprocess([np.zeros((64, 128, 3), np.uint8)]) * 0 + seg.resize_normalize(
            image, (64, 128))
        plain, mirrored = seg.forward(x), seg.forward(x.flip(-1)).flip(-1)
        scores = seg.scores(image)
    expected = {'exp': ((plain + mirrored) / 2).exp(),  # HRNet: logits averaged, then exp
                'softmax': plain.softmax(1) + mirrored.softmax(1),  # mmseg aug_test
                'logits': plain + mirrored}[merge]
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_input_size_above_the_cap_is_refused_before_allocating():
    from hostile import run_child

    report = run_child("""
import json
from cityseg_ros.engine import Segmenter
from cityseg_ros.errors import ConfigError
out = {}
for size in [(100000, 100000), (8193, 64), (64, 2**40)]:
    try:
        Segmenter('espnetv2', weights=None, device='cpu', input_size=size)
        out[str(size)] = 'built'
    except ConfigError as exc:
        out[str(size)] = str(exc)
seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=(8192, 64))
out['cap'] = list(seg.input_size)
print(json.dumps(out))
""")
    for size in ['(100000, 100000)', '(8193, 64)', '(64, 1099511627776)']:
        assert 'at most 8192 px' in report[size] and 'input size' in report[size]
    assert report['cap'] == [8192, 64]


@pytest.mark.parametrize('size', [(64.5, 128), (64,), ('64', 128)])
def test_malformed_input_size_is_a_config_error(size):
    with pytest.raises(ConfigError, match='input size'):
        Segmenter('espnetv2', weights=None, device='cpu', input_size=size)


def test_camera_size_caches_stay_bounded(seg):
    for side in range(20, 44, 2):  # a stream of changing camera sizes
        seg.predict(_images((side, 2 * side)))
    assert len(seg._index_cache) <= seg._index_cache.size
    assert len(seg._label_maker._checked) <= seg._label_maker._checked.size


def test_side_by_side_equals_one_after_the_other(seg):
    images = _images((64, 128), (64, 128), (80, 120), (64, 128), seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        side = seg.predict(images, confidence=True)
        seg._parallel_images = False
        serial = seg.predict(images, confidence=True)
    finally:
        seg._parallel_images = True
        torch.set_num_threads(before)
    for a, b in zip(side, serial):
        assert np.array_equal(a.labels, b.labels) and np.array_equal(a.confidence, b.confidence)


def _todays_prediction(model, spec, image, confidence):
    """Predict one image as the engine did before the fast path, written out plainly.

    Interleaved float batch, antialiased resize to 512x1024, normalisation, the network's
    modules (fused BatchNorm, two threads), every channel upsampled with align_corners=True,
    argmax (or softmax max), and OpenCV's pixel-centre nearest neighbour to the camera.
    """
    x = torch.from_numpy(image[None]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(512, 1024), mode='bilinear', align_corners=False,
                      antialias=True)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    x = ((x - mean) * (1.0 / torch.tensor(spec.std).view(1, 3, 1, 1))).contiguous(
        memory_format=torch.channels_last)
    scores = F.interpolate(model(x)[:, :19].float(), size=(512, 1024), mode='bilinear',
                           align_corners=True)
    size = (image.shape[1], image.shape[0])
    if not confidence:
        labels = scores.argmax(dim=1)[0].to(torch.uint8).numpy()
        return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST_EXACT), None
    conf, labels = scores.softmax(dim=1).max(dim=1)
    labels = cv2.resize(labels[0].to(torch.uint8).numpy(), size,
                        interpolation=cv2.INTER_NEAREST_EXACT)
    conf = (conf[0] * 255.0).round().to(torch.uint8).numpy()
    return labels, cv2.resize(conf, size, interpolation=cv2.INTER_NEAREST_EXACT)


def test_labels_on_the_real_frames_equal_todays_path(cityscapes_root, espnetv2_weights):
    files = sorted(cityscapes_root.glob('leftImg8bit/train/*/*.png'))
    pair = [next(cityscapes_root.glob(f'{side}Img8bit/val/*/*.png')) for side in
            ('left', 'right')]
    assert len(files) == 8
    images = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files + pair]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seg = Segmenter('espnetv2', weights=str(espnetv2_weights), device='cpu')
        fast = seg.predict(images[:8]) + seg.predict(images[8:])  # 8 frames, then the pair
        fast_conf = seg.predict(images[8:], confidence=True)
        seg.net.use_cpu_plan = False  # the modules: today's network
        with torch.inference_mode():
            todays = [_todays_prediction(seg.net, seg.spec, im, False) for im in images]
            todays_conf = [_todays_prediction(seg.net, seg.spec, im, True) for im in images[8:]]
    finally:
        torch.set_num_threads(before)
    for new, (labels, _) in zip(fast, todays):
        assert np.array_equal(new.labels, labels)
    for new, (labels, conf) in zip(fast_conf, todays_conf):
        assert np.array_equal(new.labels, labels)
        diff = np.abs(new.confidence.astype(int) - conf)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float summation order only


@pytest.mark.parametrize('shape', [(1024, 2048), (1080, 1920), (481, 641), (64, 128)])
def test_planar_preprocessing_is_bit_identical(shape):
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=(96, 160))
    image = _images(shape, seed=7)[0]
    with torch.inference_mode():
        assert torch.equal(seg._preprocess_one(image), seg.preprocess([image]))


def test_strided_and_reversed_views_are_accepted(seg):
    image = _images((128, 256), seed=9)[0]
    views = [image[..., ::-1], image[::-1], image[:, ::2], image[10:90, 20:200]]
    for view in views:
        expected = seg.predict([np.ascontiguousarray(view)])[0].labels
        assert np.array_equal(seg.predict([view])[0].labels, expected)
        assert np.array_equal(seg.predict([view, view])[1].labels, expected)
