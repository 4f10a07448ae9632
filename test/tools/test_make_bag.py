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
import os
import re
import signal
import struct
import zlib

from cityseg_ros.bags import (BagReader, COMPRESSED_IMAGE_TYPE, IMAGE_TYPE, TOPIC_GT_INSTANCE_IDS,
                              TOPIC_GT_LABEL_IDS,
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
    try:
        code = make_bag.main([*map(str, args), '--no-progress'])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
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
    assert 'aachen_000001_000019_gtFine_labelIds.png is truncated' in _one_error_line(err)
    assert not (tmp_path / 'bag').exists()


@pytest.mark.parametrize('kind', ['loop', 'fifo', 'directory', 'dangling'])
def test_a_frame_part_that_is_no_regular_file_is_refused(tmp_path, capsys, kind):
    """Before: such a camera.json, right image or label file counted as absent (exit 0)."""
    _cityscapes(tmp_path / 'cs')
    camera = tmp_path / 'cs' / 'camera' / 'train' / 'aachen' / 'aachen_000000_000019_camera.json'
    camera.unlink()
    if kind == 'loop':
        camera.symlink_to(camera.name)
    elif kind == 'fifo':
        os.mkfifo(camera)
    elif kind == 'directory':
        camera.mkdir()
    else:
        camera.symlink_to('gone.json')
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                     '--out', tmp_path / 'bag')
    assert code == 2 and 'is not a regular file' in _one_error_line(err)
    assert not (tmp_path / 'bag').exists()


def test_sigterm_while_writing_leaves_no_partial_bag(tmp_path, capsys, monkeypatch):
    """Before: SIGTERM ended Python at once, leaving a truncated bag under its final name."""
    _cityscapes(tmp_path / 'cs')
    read = make_bag._read_rgb
    calls = []

    def read_then_terminate(path):
        calls.append(path)
        if len(calls) == 2:  # the first frame is written
            os.kill(os.getpid(), signal.SIGTERM)
        return read(path)

    def default(signum, frame):  # what would otherwise end this test process
        raise AssertionError('SIGTERM reached the default handler')

    monkeypatch.setattr(make_bag, '_read_rgb', read_then_terminate)
    previous = signal.signal(signal.SIGTERM, default)
    try:
        code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train',
                         '--out', tmp_path / 'bag')
        assert signal.getsignal(signal.SIGTERM) is default  # the tool put it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 143 and err.strip() == 'make_bag: terminated', err
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


@pytest.mark.parametrize('extra, match', [
    (['--start-time', '3000000000'], '--start-time must be 0..2147483647'),
    (['--start-time', 'inf'], '--start-time must be 0..2147483647'),
    (['--start-time', 'nan'], '--start-time must be 0..2147483647'),
    (['--start-time', '-1'], '--start-time must be 0..2147483647'),
    (['--start-time', '2147483647', '--rate-hz', '1'], 'past 2147483647 s'),
    (['--rate-hz', '1e-300'], 'past 2147483647 s'),
    (['--rate-hz', '1e-9'], 'past 2147483647 s'),
    (['--rate-hz', 'inf'], '--rate-hz must be positive'),
    (['--rate-hz', 'nan'], '--rate-hz must be positive'),
    (['--rate-hz', '-17'], '--rate-hz must be positive'),
    (['--rate-hz', '2e9'], '--rate-hz must be in (0, 1e9]'),
    (['--jpeg-quality', '0'], '--jpeg-quality must be 1..100'),
    (['--jpeg-quality', '101'], '--jpeg-quality must be 1..100'),
    (['--image-format', 'webp'], "invalid choice: 'webp'"),
    (['--frame-id-prefix', 'a b'], 'must be a name'),
    (['--frame-id-prefix', ''], 'must be a name'),
    (['--limit', '-3'], '--limit must be at least 1'),
    (['--limit', 'x'], "invalid int value: 'x'"),
])
def test_impossible_values_exit_2_with_one_line(tmp_path, capsys, extra, match):
    _cityscapes(tmp_path / 'cs')
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out',
                     tmp_path / 'bag', *extra)
    assert code == 2
    assert match in _one_error_line(err)
    assert not (tmp_path / 'bag').exists()


def test_paths_that_cannot_work_exit_2_with_one_line(tmp_path, capsys):
    _cityscapes(tmp_path / 'cs')
    note = tmp_path / 'note.txt'
    note.write_text('x')
    (tmp_path / 'link').symlink_to(tmp_path / 'nowhere')
    cases = [
        (['--cityscapes-root', note, '--split', 'train', '--out', tmp_path / 'a'],
         'is not a directory'),
        (['--cityscapes-root', tmp_path / 'cs', '--split', '../..', '--out', tmp_path / 'b'],
         'is not a split name'),
        (['--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out', note / 'bag'],
         'is a file, not a folder'),
        (['--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out', tmp_path / 'link'],
         'exists already'),
    ]
    for argv, match in cases:
        code, err = _run(capsys, *argv)
        assert code == 2 and match in _one_error_line(err), err


@pytest.mark.parametrize('camera, match', [
    ({'intrinsic': {'fx': float('nan'), 'fy': 1, 'u0': 1, 'v0': 1},
      'extrinsic': {'baseline': 0.2}}, 'fx nan'),
    ({'intrinsic': {'fx': 1, 'fy': -1, 'u0': 1, 'v0': 1}, 'extrinsic': {'baseline': 0.2}},
     'fy -1.0'),
    ({'intrinsic': {'fx': 1, 'fy': 1, 'u0': 1, 'v0': 1}, 'extrinsic': {'baseline': 1e999}},
     'baseline inf'),
    ([1, 2, 3], 'not a Cityscapes camera file'),
    ({'intrinsic': {'fx': 'abc'}}, 'not a Cityscapes camera file'),
])
def test_impossible_camera_files_exit_2(tmp_path, capsys, camera, match):
    _cityscapes(tmp_path / 'cs')
    path = next((tmp_path / 'cs' / 'camera').rglob('*_camera.json'))
    path.write_text(json.dumps(camera))
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out',
                     tmp_path / 'bag')
    assert code == 2 and match in _one_error_line(err)
    assert not (tmp_path / 'bag').exists()


def _png_header_only(path, width, height):
    """Write a tiny PNG whose header claims width x height (a decompression bomb's header)."""
    def chunk(kind, data):
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))
    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(bytes(3 * width + 1) * 4)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', rows)
                     + chunk(b'IEND', b''))


_MAKE_BAG_IN_A_CHILD = """
import json, os, resource, sys, tempfile
from cityseg_ros.tools import make_bag
with tempfile.TemporaryFile() as err:
    os.dup2(err.fileno(), 2)
    try:
        code = make_bag.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    sys.stderr.flush()
    err.seek(0)
    text = err.read().decode(errors='replace')
peak = peak_rss()
print(json.dumps({'code': code, 'stderr': text, 'peak': peak}))
"""


def test_png_bomb_is_refused_from_its_header_in_a_child(tmp_path):
    from hostile import GIB, run_child

    _cityscapes(tmp_path / 'cs')
    left = next((tmp_path / 'cs' / 'leftImg8bit').rglob('*_leftImg8bit.png'))
    _png_header_only(left, 30000, 30000)
    report = run_child(_MAKE_BAG_IN_A_CHILD, '--cityscapes-root', tmp_path / 'cs', '--split',
                       'train', '--out', tmp_path / 'bag')
    lines = report['stderr'].strip().splitlines()
    assert report['code'] == 2 and len(lines) == 1, report
    assert 'more than the limit of' in lines[0] and '30000x30000' in lines[0]
    assert report['peak'] < 1 * GIB
    assert not (tmp_path / 'bag').exists()


@pytest.mark.parametrize('image_format', ['jpeg', 'png'])
def test_compressed_images_on_the_compressed_topics(tmp_path, capsys, image_format):
    expected = _cityscapes(tmp_path / 'cs')
    out = tmp_path / 'bag'
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out',
                     out, '--image-format', image_format, '--jpeg-quality', '90')
    assert code == 0, err
    left, right = f'{TOPIC_LEFT_IMAGE}/compressed', f'{TOPIC_RIGHT_IMAGE}/compressed'
    with BagReader(out) as bag:
        topics = bag.topics
        assert TOPIC_LEFT_IMAGE not in topics and TOPIC_RIGHT_IMAGE not in topics
        assert topics[left] == (COMPRESSED_IMAGE_TYPE, 3) and topics[right].count == 2
        assert topics[TOPIC_GT_LABEL_IDS].msgtype == IMAGE_TYPE  # ground truth stays raw
        records = list(bag.read_messages(left))
        assert {r.msg.format for r in records} == {f'rgb8; {image_format} compressed bgr8'}
        frames = list(bag.read_frames(left, gt_topic=TOPIC_GT_LABEL_IDS, right_topic=right))
    names = sorted(expected)
    assert len(frames) == 2
    for frame, name in zip(frames, names):
        want = expected[name]
        np.testing.assert_array_equal(frame.gt_label_ids, want['labels'])
        for got, photo in ((frame.left, want['left']), (frame.right, want['right'])):
            assert got.shape == photo.shape and got.dtype == np.uint8
            if image_format == 'png':
                np.testing.assert_array_equal(got, photo)
            else:  # random noise is JPEG's worst case: only check the colour order is kept
                assert np.corrcoef(got.ravel(), photo.ravel())[0, 1] > 0.5


def test_grey_and_rgba_photos_are_written_as_rgb(tmp_path, capsys):
    expected = _cityscapes(tmp_path / 'cs')
    names = sorted(expected)
    lefts = sorted((tmp_path / 'cs' / 'leftImg8bit').rglob('*.png'), key=lambda p: p.name)
    grey = expected[names[0]]['left'][..., 0].copy()
    _write_png(lefts[0], grey)
    rgba = np.dstack([expected[names[1]]['left'][..., ::-1], np.full((HEIGHT, WIDTH), 9,
                                                                     np.uint8)])
    _write_png(lefts[1], rgba)
    code, err = _run(capsys, '--cityscapes-root', tmp_path / 'cs', '--split', 'train', '--out',
                     tmp_path / 'bag')
    assert code == 0, err
    with BagReader(tmp_path / 'bag') as bag:
        images = [r.image for r in bag.read_images(TOPIC_LEFT_IMAGE)]
    np.testing.assert_array_equal(images[0], np.dstack([grey] * 3))
    np.testing.assert_array_equal(images[1], expected[names[1]]['left'])
