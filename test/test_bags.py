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

"""bags.py: write/read round trips in both storages, conversions, and every error path."""

from pathlib import Path

from cityseg_ros.bags import (BagReader, BagWriter, CameraCalibration, COMPRESSED_IMAGE_TYPE,
                              image_msg, image_to_numpy, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE, TOPIC_LEFT_INFO, TOPIC_RIGHT_IMAGE,
                              TOPIC_RIGHT_INFO)
from cityseg_ros.errors import BagError, ImageError
import cv2
import numpy as np
import pytest

STORAGES = ['mcap', 'sqlite3']
START = 1_600_000_000 * 10**9
PERIOD = 58_823_529  # 17 Hz
LEFT_FRAME = 'stereo_left_optical_frame'
RIGHT_FRAME = 'stereo_right_optical_frame'


def _frame_arrays(i, height=12, width=20):
    rng = np.random.default_rng(i)
    return {
        'left': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        'right': rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        'gt': rng.integers(0, 34, (height, width), dtype=np.uint8),
        'inst': rng.choice(np.array([7, 26000, 26001, 33999, 65535], dtype=np.uint16),
                           (height, width)),
    }


def _calibrations(width=20, height=12):
    left = CameraCalibration.pinhole(width, height, 22.6, 22.7, 10.5, 6.25)
    right = CameraCalibration.pinhole(width, height, 22.6, 22.7, 10.5, 6.25, tx=-22.6 * 0.2)
    return left, right


def _write_stereo_bag(path, storage, frames=3, skip_gt=(), **size):
    expected = []
    left_cal, right_cal = _calibrations(**size)
    with BagWriter(path, storage=storage) as bag:
        for i in range(frames):
            stamp = START + i * PERIOD
            arrays = _frame_arrays(i, **size)
            bag.write_image(TOPIC_LEFT_IMAGE, arrays['left'], 'rgb8', stamp, LEFT_FRAME)
            bag.write_camera_info(TOPIC_LEFT_INFO, left_cal, stamp, LEFT_FRAME)
            bag.write_image(TOPIC_RIGHT_IMAGE, arrays['right'], 'rgb8', stamp, RIGHT_FRAME)
            bag.write_camera_info(TOPIC_RIGHT_INFO, right_cal, stamp, RIGHT_FRAME)
            if i not in skip_gt:
                bag.write_image(TOPIC_GT_LABEL_IDS, arrays['gt'], 'mono8', stamp, LEFT_FRAME)
                bag.write_image(TOPIC_GT_INSTANCE_IDS, arrays['inst'], 'mono16', stamp,
                                LEFT_FRAME)
                expected.append((stamp, arrays))
    return expected


def _assert_calibration_equal(a, b):
    assert (a.width, a.height, a.distortion_model) == (b.width, b.height, b.distortion_model)
    for name in 'kdrp':
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize('storage', STORAGES)
def test_round_trip_is_bit_exact(tmp_path, storage):
    path = tmp_path / 'bag'
    expected = _write_stereo_bag(path, storage)
    with BagReader(path) as bag:
        assert not bag.damaged
        topics = bag.topics
        assert topics[TOPIC_LEFT_IMAGE].msgtype == 'sensor_msgs/msg/Image'
        assert topics[TOPIC_LEFT_INFO].msgtype == 'sensor_msgs/msg/CameraInfo'
        assert {t: i.count for t, i in topics.items()} == {
            TOPIC_LEFT_IMAGE: 3, TOPIC_RIGHT_IMAGE: 3, TOPIC_LEFT_INFO: 3, TOPIC_RIGHT_INFO: 3,
            TOPIC_GT_LABEL_IDS: 3, TOPIC_GT_INSTANCE_IDS: 3}
        frames = list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS,
                                      inst_topic=TOPIC_GT_INSTANCE_IDS,
                                      right_topic=TOPIC_RIGHT_IMAGE))
        assert len(frames) == 3
        for frame, (stamp, arrays) in zip(frames, expected):
            assert frame.stamp_ns == stamp
            assert frame.frame_id == LEFT_FRAME
            for got, want in ((frame.left, arrays['left']), (frame.right, arrays['right']),
                              (frame.gt_label_ids, arrays['gt'])):
                assert got.dtype == want.dtype and got.shape == want.shape
                np.testing.assert_array_equal(got, want)
            assert frame.gt_instance_ids.dtype == np.int32
            np.testing.assert_array_equal(frame.gt_instance_ids, arrays['inst'].astype(np.int32))
            assert frame.left.flags.writeable and frame.left.flags.c_contiguous
        assert bag.pairing_stats.matched == 3 and bag.pairing_stats.dropped == 0

        left_cal, right_cal = _calibrations()
        infos = list(bag.read_camera_info(TOPIC_RIGHT_INFO))
        assert [r.stamp_ns for r in infos] == [s for s, _ in expected]
        assert {r.frame_id for r in infos} == {RIGHT_FRAME}
        _assert_calibration_equal(infos[0].calibration, right_cal)
        assert infos[0].calibration.baseline_m == pytest.approx(0.2)
        _assert_calibration_equal(next(bag.read_camera_info(TOPIC_LEFT_INFO)).calibration,
                                  left_cal)

        records = list(bag.read_images(TOPIC_GT_INSTANCE_IDS))
        assert [r.stamp_ns for r in records] == [s for s, _ in expected]
        assert records[0].image.dtype == np.uint16 and records[0].frame_id == LEFT_FRAME
        np.testing.assert_array_equal(records[0].image, expected[0][1]['inst'])


@pytest.mark.parametrize('storage', STORAGES)
def test_reader_opens_the_storage_file_itself(tmp_path, storage):
    _write_stereo_bag(tmp_path / 'bag', storage, frames=1)
    (storage_file,) = [p for p in (tmp_path / 'bag').iterdir() if p.suffix != '.yaml']
    with BagReader(storage_file) as bag:
        assert len(list(bag.read_frames(TOPIC_LEFT_IMAGE))) == 1


def test_frames_without_a_gt_partner_are_skipped_and_counted(tmp_path):
    expected = _write_stereo_bag(tmp_path / 'bag', 'mcap', frames=4, skip_gt=(1,))
    with BagReader(tmp_path / 'bag') as bag:
        frames = list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS))
        assert [f.stamp_ns for f in frames] == [s for s, _ in expected]
        assert frames[0].right is None and frames[0].gt_instance_ids is None
        assert bag.pairing_stats.dropped_unmatched == {'left': 1, 'gt': 0}


@pytest.mark.parametrize('encoding,convert', [
    ('bgr8', lambda rgb: rgb[..., ::-1]),
    ('rgba8', lambda rgb: np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])),
    ('bgra8', lambda rgb: np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 7, np.uint8)])),
])
def test_colour_encodings_are_read_as_rgb(tmp_path, encoding, convert):
    rgb = _frame_arrays(0)['left']
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/cam', np.ascontiguousarray(convert(rgb)), encoding, START, 'cam')
    with BagReader(tmp_path / 'bag') as bag:
        (frame,) = bag.read_frames('/cam')
        np.testing.assert_array_equal(frame.left, rgb)
        (record,) = bag.read_images('/cam')
        np.testing.assert_array_equal(record.image, rgb)


def test_mono8_is_rgb_as_a_camera_image_and_2d_as_labels(tmp_path):
    gray = _frame_arrays(0)['gt']
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/pred', gray, 'mono8', START, 'cam')
    with BagReader(tmp_path / 'bag') as bag:
        (frame,) = bag.read_frames('/pred')
        np.testing.assert_array_equal(frame.left, np.dstack([gray] * 3))
        (record,) = bag.read_images('/pred')
        assert record.image.shape == gray.shape
        np.testing.assert_array_equal(record.image, gray)


def test_padded_rows_and_big_endian_data_are_decoded():
    rgb = _frame_arrays(1)['left']
    msg = image_msg(rgb, 'rgb8', START, 'cam')
    height, width = rgb.shape[:2]
    padded = np.zeros((height, width * 3 + 4), np.uint8)
    padded[:, :width * 3] = rgb.reshape(height, -1)
    msg.step, msg.data = width * 3 + 4, padded.reshape(-1)
    np.testing.assert_array_equal(image_to_numpy(msg, rgb=True), rgb)

    inst = _frame_arrays(1)['inst']
    msg = image_msg(inst, 'mono16', START, 'cam')
    msg.is_bigendian, msg.data = 1, inst.astype('>u2').view(np.uint8).reshape(-1)
    np.testing.assert_array_equal(image_to_numpy(msg), inst)


def test_image_msg_rejects_arrays_that_do_not_fit_the_encoding():
    with pytest.raises(ImageError, match='HxWx3 uint8'):
        image_msg(np.zeros((4, 4), np.uint8), 'rgb8', 0, 'f')
    with pytest.raises(ImageError, match='uint16'):
        image_msg(np.zeros((4, 4), np.int32), 'mono16', 0, 'f')
    with pytest.raises(ImageError, match='cannot write encoding'):
        image_msg(np.zeros((4, 4), np.uint8), 'yuv422', 0, 'f')


def test_image_to_numpy_rejects_unsupported_and_non_camera_encodings():
    msg = image_msg(np.zeros((4, 4), np.float32), '32FC1', 0, 'f')
    with pytest.raises(ImageError, match='camera image must be one of'):
        image_to_numpy(msg, rgb=True)
    msg.encoding = 'yuv411'
    with pytest.raises(ImageError, match="'yuv411' is not supported"):
        image_to_numpy(msg)


@pytest.mark.parametrize('storage', STORAGES)
def test_reader_raises_on_image_data_shorter_than_step_times_height(tmp_path, storage):
    good = image_msg(_frame_arrays(0)['left'], 'rgb8', START, 'cam')
    short = image_msg(_frame_arrays(1)['left'], 'rgb8', START + PERIOD, 'cam')
    short.data = short.data[:-5]
    with BagWriter(tmp_path / 'bag', storage) as bag:
        bag.write_message('/cam', good, START)
        bag.write_message('/cam', short, START + PERIOD)
    with BagReader(tmp_path / 'bag') as bag:
        frames = bag.read_frames('/cam')
        assert next(frames).stamp_ns == START
        with pytest.raises(BagError, match=r'/cam at stamp .* fewer than step x height'):
            next(frames)


def test_reader_raises_on_missing_topic_listing_the_topics_present(tmp_path):
    _write_stereo_bag(tmp_path / 'bag', 'mcap', frames=1)
    with BagReader(tmp_path / 'bag') as bag:
        with pytest.raises(BagError) as info:
            list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic='/stereo/left/gt/labels'))
    message = str(info.value)
    assert str(tmp_path / 'bag') in message
    assert 'no topic /stereo/left/gt/labels' in message
    for topic in (TOPIC_LEFT_IMAGE, TOPIC_GT_LABEL_IDS, TOPIC_RIGHT_INFO):
        assert topic in message


def test_reader_raises_on_a_topic_of_another_type(tmp_path):
    _write_stereo_bag(tmp_path / 'bag', 'mcap', frames=1)
    with BagReader(tmp_path / 'bag') as bag:
        with pytest.raises(BagError, match='holds sensor_msgs/msg/CameraInfo, expected '):
            list(bag.read_images(TOPIC_LEFT_INFO))
        with pytest.raises(BagError, match='expected sensor_msgs/msg/CameraInfo'):
            list(bag.read_camera_info(TOPIC_LEFT_IMAGE))


def test_reader_raises_when_gt_is_not_mono8(tmp_path):
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/cam', _frame_arrays(0)['left'], 'rgb8', START, 'cam')
        bag.write_image('/gt', _frame_arrays(0)['inst'], 'mono16', START, 'cam')
    with BagReader(tmp_path / 'bag') as bag:
        with pytest.raises(BagError, match='/gt must hold mono8 labelIds'):
            list(bag.read_frames('/cam', gt_topic='/gt'))


def test_reader_raises_on_missing_path_and_non_bags(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        BagReader(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='is not a rosbag2'):
        BagReader(tmp_path / 'empty').open()
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    with pytest.raises(BagError, match='is not a rosbag2'):
        BagReader(text).open()
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(b'\x00' * 4096)
    with pytest.raises(BagError, match='nothing in it is readable.*MCAP magic'):
        BagReader(garbage).open()
    with pytest.raises(BagError, match='not open'):
        list(BagReader(text).read_images('/x'))


def test_writer_refuses_existing_paths_and_unknown_storage(tmp_path):
    with pytest.raises(BagError, match='exists already'):
        BagWriter(tmp_path)
    with pytest.raises(BagError, match="storage 'rosbag1' is not supported"):
        BagWriter(tmp_path / 'bag', storage='rosbag1')
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image('/a', np.zeros((2, 2), np.uint8), 'mono8', 0, 'f')
        with pytest.raises(BagError, match='holds sensor_msgs/msg/Image'):
            bag.write_camera_info('/a', _calibrations()[0], 0, 'f')


def test_writer_closes_the_bag_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError):
        with BagWriter(tmp_path / 'bag') as bag:
            bag.write_image('/a', np.zeros((2, 2), np.uint8), 'mono8', 5, 'f')
            raise RuntimeError('stop')
    with BagReader(tmp_path / 'bag') as reader:
        assert [r.stamp_ns for r in reader.read_images('/a')] == [5]


# Damaged bags: images big enough that the mcap writer closes several 1 MiB chunks.
DAMAGE_FRAMES = 8
DAMAGE_SIZE = {'height': 240, 'width': 400}


def _damaged_bag(tmp_path, storage, damage):
    path = tmp_path / 'bag'
    expected = _write_stereo_bag(path, storage, frames=DAMAGE_FRAMES, **DAMAGE_SIZE)
    (storage_file,) = [p for p in path.iterdir() if p.suffix != '.yaml']
    data = bytearray(storage_file.read_bytes())
    cut = int(len(data) * 0.6)
    if damage == 'truncated':
        data = data[:cut]
    else:
        # Neither storage checksums image data (rosbags writes mcap chunk crc 0; SQLite has
        # none): only garbage in record headers or page pointers is noticed, so cover a
        # stretch long enough to hit some that belong to images that are read.
        start, end = int(len(data) * 0.5), int(len(data) * 0.8)
        data[start:end] = np.random.default_rng(0).integers(
            0, 256, end - start, dtype=np.uint8).tobytes()
    storage_file.write_bytes(bytes(data))
    return path, expected


@pytest.mark.parametrize('storage,damage', [
    ('mcap', 'truncated'), ('mcap', 'garbage'), ('sqlite3', 'truncated'), ('sqlite3', 'garbage'),
])
def test_damaged_bag_yields_the_good_frames_then_raises(tmp_path, storage, damage):
    path, expected = _damaged_bag(tmp_path, storage, damage)
    frames = []
    with BagReader(path) as bag:
        with pytest.raises(BagError, match=r'is damaged: .* frames were read before it'):
            for frame in bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS,
                                         right_topic=TOPIC_RIGHT_IMAGE):
                frames.append(frame)
    assert 0 < len(frames) < DAMAGE_FRAMES
    for frame, (stamp, arrays) in zip(frames, expected):
        assert frame.stamp_ns == stamp
        np.testing.assert_array_equal(frame.left, arrays['left'])
        np.testing.assert_array_equal(frame.right, arrays['right'])
        np.testing.assert_array_equal(frame.gt_label_ids, arrays['gt'])


@pytest.mark.parametrize('storage', STORAGES)
def test_damaged_bag_reports_damage_for_single_topic_reads(tmp_path, storage):
    path, expected = _damaged_bag(tmp_path, storage, 'truncated')
    with BagReader(path) as bag:
        assert bag.damaged
        assert TOPIC_LEFT_IMAGE in bag.topics
        stamps = []
        with pytest.raises(BagError, match='images of /stereo/left/gt/label_ids were read'):
            for record in bag.read_images(TOPIC_GT_LABEL_IDS):
                stamps.append(record.stamp_ns)
    assert stamps and stamps == [s for s, _ in expected][:len(stamps)]


def test_mcap_cut_inside_its_first_record_has_nothing_readable(tmp_path):
    _write_stereo_bag(tmp_path / 'bag', 'mcap', frames=1)
    mcap = next((tmp_path / 'bag').glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:40])
    with pytest.raises(BagError, match='nothing in it is readable'):
        BagReader(tmp_path / 'bag').open()


def test_bag_without_metadata_yaml_is_still_read(tmp_path):
    expected = _write_stereo_bag(tmp_path / 'bag', 'mcap', frames=2)
    Path(tmp_path / 'bag' / 'metadata.yaml').unlink()
    with BagReader(tmp_path / 'bag') as bag:
        frames = list(bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS))
    assert [f.stamp_ns for f in frames] == [s for s, _ in expected]


def test_left_image_matches_what_opencv_wrote(tmp_path):
    """A PNG read with cv2 (BGR) and stored as rgb8 comes back as the same RGB pixels."""
    bgr = _frame_arrays(3)['left']
    cv2.imwrite(str(tmp_path / 'x.png'), bgr)
    rgb = cv2.cvtColor(cv2.imread(str(tmp_path / 'x.png')), cv2.COLOR_BGR2RGB)
    with BagWriter(tmp_path / 'bag', 'sqlite3') as bag:
        bag.write_image('/cam', rgb, 'rgb8', START, 'cam')
    with BagReader(tmp_path / 'bag') as bag:
        np.testing.assert_array_equal(next(bag.read_frames('/cam')).left, bgr[..., ::-1])


def test_sqlite3_damage_met_while_reading_is_raised_after_the_good_frames(tmp_path):
    """Raise after the good frames when rosbags opens the file but meets a broken page."""
    path = tmp_path / 'bag'
    expected = _write_stereo_bag(path, 'sqlite3', frames=4, height=64, width=96)
    db3 = next(path.glob('*.db3'))
    data = bytearray(db3.read_bytes())
    pixels = expected[2][1]['left'].tobytes()
    offset = data.find(pixels[len(pixels) // 2:len(pixels) // 2 + 64])
    page_size = int.from_bytes(data[16:18], 'big')  # SQLite file header
    page = offset // page_size * page_size  # an overflow page of frame 2's left image
    data[page:page + 4] = b'\xff\xff\xff\xff'  # its next-page pointer
    db3.write_bytes(bytes(data))
    frames = []
    with BagReader(path) as bag:
        assert not bag.damaged
        with pytest.raises(BagError, match='damaged: .*malformed; 2 frames were read'):
            for frame in bag.read_frames(TOPIC_LEFT_IMAGE, gt_topic=TOPIC_GT_LABEL_IDS):
                frames.append(frame)
    assert [f.stamp_ns for f in frames] == [s for s, _ in expected[:2]]


@pytest.mark.parametrize('storage', STORAGES)
def test_compressed_images_are_read_by_their_message_type(tmp_path, storage):
    arrays = _frame_arrays(0)
    with BagWriter(tmp_path / 'bag', storage=storage) as bag:
        bag.write_compressed_image('/cam/compressed', arrays['left'], 'png', 'rgb8', START, 'c')
        bag.write_compressed_image('/jpeg/compressed', arrays['left'], 'jpeg', 'rgb8', START,
                                   'c')
        bag.write_compressed_image('/gt/compressed', arrays['gt'], 'png', 'mono8', START, 'c')
        bag.write_compressed_image('/gt/jpeg', arrays['gt'], 'jpeg', 'mono8', START, 'c')
    with BagReader(tmp_path / 'bag') as bag:
        assert bag.topics['/cam/compressed'].msgtype == COMPRESSED_IMAGE_TYPE
        (frame,) = bag.read_frames('/cam/compressed', gt_topic='/gt/compressed')
        np.testing.assert_array_equal(frame.left, arrays['left'])  # PNG: lossless
        np.testing.assert_array_equal(frame.gt_label_ids, arrays['gt'])
        (record,) = bag.read_images('/gt/compressed')
        assert record.image.shape == arrays['gt'].shape and record.frame_id == 'c'
        (jpeg,) = bag.read_frames('/jpeg/compressed')
        assert jpeg.left.shape == arrays['left'].shape and jpeg.left.dtype == np.uint8
        with pytest.raises(BagError, match='must be PNG'):
            list(bag.read_frames('/cam/compressed', gt_topic='/gt/jpeg'))
        (message,) = bag.read_messages('/jpeg/compressed')
        assert message.msg.format == 'rgb8; jpeg compressed bgr8' and message.stamp_ns == START


def test_corrupt_compressed_image_raises_bag_error_naming_topic_and_stamp(tmp_path):
    from cityseg_ros.bags import compressed_image_msg

    msg = compressed_image_msg(_frame_arrays(0)['gt'], 'png', 'mono8', START, 'c')
    msg.data = msg.data[:40]
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_message('/gt/compressed', msg, START)
    with BagReader(tmp_path / 'bag') as bag:
        with pytest.raises(BagError, match=f'/gt/compressed at stamp {START} ns'):
            list(bag.read_images('/gt/compressed'))
