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

"""make_bag: Cityscapes folders -> the contract bag, read back; bad input exits 2."""

import json
import re

from cityseg_ros.bags import (BagReader, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE, TOPIC_LEFT_INFO, TOPIC_RIGHT_IMAGE,
                              TOPIC_RIGHT_INFO)
from cityseg_ros.tools import make_bag
import cv2
import numpy as np
import pytest

HEIGHT, WIDTH = 16, 32
START_S = 1_600_000_000
CAMERA = {'extrinsic': {'baseline': 0.22, 'pitch': 0.04, 'roll': 0.0, 'x': 1.7, 'y': 0.1,
                        'yaw': 0.0, 'z': 1.2},
          'intrinsic': {'fx': 35.5, 'fy': 35.25, 'u0': 16.25, 'v0': 7.5}}


def _write_png(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _cityscapes(root, split='train'):
    """Write a tiny Cityscapes layout, 3 frames in 2 cities; return their arrays by name.

    ``bonn_000001`` has no right image and no GT; only ``aachen`` has camera files.
    """
    frames = {}
    names = [('aachen', 'aachen_000000_000019'), ('aachen', 'aachen_000001_000019'),
             ('bonn', 'bonn_000001_000019')]
    for i, (city, name) in enumerate(names):
        rng = np.random.default_rng(i)
        bgr = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        _write_png(root / 'leftImg8bit' / split / city / f'{name}_leftImg8bit.png', bgr)
        entry = {'left': bgr[..., ::-1]}
        if city == 'aachen':
            right = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            _write_png(root / 'rightImg8bit' / split / city / f'{name}_rightImg8bit.png', right)
            labels = rng.integers(0, 34, (HEIGHT, WIDTH), dtype=np.uint8)
            instances = np.where(labels == 26, 26000 + i, labels).astype(np.uint16)
            _write_png(root / 'gtFine' / split / city / f'{name}_gtFine_labelIds.png', labels)
            _write_png(root / 'gtFine' / split / city / f'{name}_gtFine_instanceIds.png',
                       instances)
            camera = root / 'camera' / split / city / f'{name}_camera.json'
            camera.parent.mkdir(parents=True, exist_ok=True)
            camera.write_text(json.dumps(CAMERA))
            entry.update(right=right[..., ::-1], labels=labels, instances=instances)
        frames[name] = entry
    return frames


def _run(capsys, *args):
    code = make_bag.main([*map(str, args), '--no-progress'])
    return code, capsys.readouterr().err


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_make_bag_writes_the_contract_topics(tmp_path, capsys, caplog, storage):
    expected = _cityscapes(tmp_path / 'cs')
    out = tmp_path / 'bag'
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                     '--out', out, '--storage', storage, '--start-time', START_S)
    assert code == 0, err
    stamps = [START_S * 10**9 + round(i * 1e9 / 17) for i in range(3)]
    names = sorted(expected)
    with BagReader(out) as bag:
        assert next(out.glob(f'*.{"mcap" if storage == "mcap" else "db3"}'))
        counts = {topic: info.count for topic, info in bag.topics.items()}
        assert counts == {TOPIC_LEFT_IMAGE: 3, TOPIC_LEFT_INFO: 3, TOPIC_RIGHT_IMAGE: 2,
                          TOPIC_RIGHT_INFO: 2, TOPIC_GT_LABEL_IDS: 2, TOPIC_GT_INSTANCE_IDS: 2}
        frames = list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS,
                                      inst_topic=TOPIC_GT_INSTANCE_IDS,
                                      right_topic=TOPIC_RIGHT_IMAGE))
        assert [f.stamp_ns for f in frames] == stamps[:2]
        for frame, name in zip(frames, names):
            want = expected[name]
            assert frame.frame_id == 'stereo_left_optical_frame'
            np.testing.assert_array_equal(frame.left, want['left'])
            np.testing.assert_array_equal(frame.right, want['right'])
            np.testing.assert_array_equal(frame.gt_label_ids, want['labels'])
            np.testing.assert_array_equal(frame.gt_instance_ids, want['instances'])
        lefts = list(bag.read_images(TOPIC_LEFT_IMAGE))
        assert [r.stamp_ns for r in lefts] == stamps
        np.testing.assert_array_equal(lefts[2].image, expected[names[2]]['left'])

        rights = list(bag.read_images(TOPIC_RIGHT_IMAGE))
        assert {r.frame_id for r in rights} == {'stereo_right_optical_frame'}
        infos = list(bag.read_camera_info(TOPIC_LEFT_INFO))
        assert [i.stamp_ns for i in infos] == stamps
        # Cityscapes camera files hold the 2048x1024 values: scaled to the 32x16 images.
        fx, fy, u0, v0 = (CAMERA['intrinsic'][k] / 64 for k in ('fx', 'fy', 'u0', 'v0'))
        left = infos[0].calibration
        assert (left.width, left.height, left.distortion_model) == (WIDTH, HEIGHT, 'plumb_bob')
        np.testing.assert_allclose(left.k, [[fx, 0, u0], [0, fy, v0], [0, 0, 1]])
        np.testing.assert_allclose(left.p, [[fx, 0, u0, 0], [0, fy, v0, 0], [0, 0, 1, 0]])
        np.testing.assert_array_equal(left.r, np.eye(3))
        np.testing.assert_array_equal(left.d, np.zeros(5))
        (right, _) = [i.calibration for i in bag.read_camera_info(TOPIC_RIGHT_INFO)]
        assert right.p[0, 3] == pytest.approx(-fx * 0.22)
        # bonn has no camera file: the documented default, scaled to the 32x16 images.
        default = infos[2].calibration
        np.testing.assert_allclose(default.k, [[2262.52 / 64, 0, 1096.98 / 64],
                                               [0, 2265.30 / 64, 513.14 / 64], [0, 0, 1]])
    assert 'default Cityscapes calibration' in caplog.text


def test_city_limit_rate_and_frame_id_prefix(tmp_path, capsys, caplog):
    _cityscapes(tmp_path / 'cs')
    out = tmp_path / 'bag'
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                     '--out', out, '--city', 'aachen', '--limit', '1', '--rate-hz', '10',
                     '--start-time', '2.5', '--frame-id-prefix', 'front')
    assert code == 0, err
    with BagReader(out) as bag:
        (frame,) = bag.read_frames(TOPIC_LEFT_IMAGE, right_topic=TOPIC_RIGHT_IMAGE)
        assert frame.stamp_ns == 2_500_000_000
        assert frame.frame_id == 'front_left_optical_frame'
        assert next(bag.read_images(TOPIC_RIGHT_IMAGE)).frame_id == 'front_right_optical_frame'
    assert 'default Cityscapes calibration' not in caplog.text  # aachen has camera files


def test_frames_are_sorted_by_name_and_stamped_at_17_hz(tmp_path, capsys):
    _cityscapes(tmp_path / 'cs')
    out = tmp_path / 'bag'
    assert _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                '--out', out, '--city', 'bonn', '--city', 'aachen')[0] == 0
    with BagReader(out) as bag:
        stamps = [r.stamp_ns for r in bag.read_images(TOPIC_LEFT_IMAGE)]
    assert np.diff(stamps).tolist() == [58823529, 58823530]
    frames = make_bag.find_frames(tmp_path / 'cs', 'train')
    assert [f.name for f in frames] == ['aachen_000000_000019', 'aachen_000001_000019',
                                        'bonn_000001_000019']
    assert frames[2].right is None and frames[2].label_ids is None and frames[2].camera is None


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith('make_bag: error: ')
    return lines[0]


@pytest.mark.parametrize('case,match', [
    ('root missing', 'is not a directory'),
    ('split missing', 'splits present under .*: test, train'),
    ('split without images', r'no \*_leftImg8bit.png under'),
    ('unknown city', 'no city paris in split train; cities present: aachen, bonn'),
    ('out exists', '--out .* exists already'),
    ('bad limit', '--limit must be at least 1'),
    ('bad rate', '--rate-hz must be positive'),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case, match):
    _cityscapes(tmp_path / 'cs')
    (tmp_path / 'cs' / 'leftImg8bit' / 'test' / 'berlin').mkdir(parents=True)
    (tmp_path / 'exists').mkdir()
    args = {'root': tmp_path / 'cs', 'split': 'train', 'out': tmp_path / 'bag', 'extra': []}
    if case == 'root missing':
        args['root'] = tmp_path / 'nope'
    elif case == 'split missing':
        args['split'] = 'val'
    elif case == 'split without images':
        args['split'] = 'test'
    elif case == 'unknown city':
        args['extra'] = ['--city', 'paris']
    elif case == 'out exists':
        args['out'] = tmp_path / 'exists'
    elif case == 'bad limit':
        args['extra'] = ['--limit', '0']
    elif case == 'bad rate':
        args['extra'] = ['--rate-hz', '0']
    code, err = _run(capsys, '--cityscapes-root', args['root'], '--split', args['split'],
                     '--out', args['out'], *args['extra'])
    assert code == 2
    assert re.search(match, _one_error_line(err))
    assert not (tmp_path / 'bag').exists()


def test_unreadable_png_exits_2_and_leaves_no_partial_bag(tmp_path, capsys):
    _cityscapes(tmp_path / 'cs')
    broken = tmp_path / 'cs' / 'gtFine' / 'train' / 'aachen'
    (broken / 'aachen_000001_000019_gtFine_labelIds.png').write_bytes(b'\x89PNG\r\n\x1a\n')
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                     '--out', tmp_path / 'bag')
    assert code == 2
    assert 'aachen_000001_000019_gtFine_labelIds.png cannot be read' in err.splitlines()[-1]
    assert not (tmp_path / 'bag').exists()


def test_labels_of_the_wrong_kind_are_rejected(tmp_path, capsys):
    _cityscapes(tmp_path / 'cs')
    gt = tmp_path / 'cs' / 'gtFine' / 'train' / 'aachen'
    gt = gt / 'aachen_000000_000019_gtFine_labelIds.png'
    _write_png(gt, np.zeros((HEIGHT, WIDTH, 3), np.uint8))  # a colour image
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                     '--out', tmp_path / 'bag')
    assert code == 2
    assert '8-bit labelIds PNG' in err.splitlines()[-1]


def test_real_cityscapes_frames(tmp_path, capsys, cityscapes_root):
    out = tmp_path / 'bag'
    code, err = _run(capsys, '--cityscapes-root', cityscapes_root, '--split', 'train',
                     '--out', out, '--limit', '2')
    assert code == 0, err
    lefts = sorted((cityscapes_root / 'leftImg8bit' / 'train').glob('*/*_leftImg8bit.png'),
                   key=lambda p: p.name)[:2]
    with BagReader(out) as bag:
        frames = list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS,
                                      inst_topic=TOPIC_GT_INSTANCE_IDS))
        infos = list(bag.read_camera_info(TOPIC_LEFT_INFO))
    assert len(frames) == 2
    for frame, left in zip(frames, lefts):
        name = left.name[:-len('_leftImg8bit.png')]
        gt_dir = cityscapes_root / 'gtFine' / 'train' / left.parent.name
        np.testing.assert_array_equal(frame.left, cv2.imread(str(left))[..., ::-1])
        labels = cv2.imread(str(gt_dir / f'{name}_gtFine_labelIds.png'), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(frame.gt_label_ids, labels)
        instances = cv2.imread(str(gt_dir / f'{name}_gtFine_instanceIds.png'),
                               cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(frame.gt_instance_ids, instances.astype(np.int32))
        assert frame.left.shape == (1024, 2048, 3)
    assert infos[0].calibration.width == 2048 and infos[0].calibration.height == 1024
