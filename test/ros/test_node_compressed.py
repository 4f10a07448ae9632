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

"""Compressed images in, lossless labels out: JPEG and PNG as image_transport writes them."""

import array
import threading
import time

from cityseg_ros.compressed import decode_compressed
import cityseg_ros.ros.node as node_module
from node_harness import camera_info, expected_labels, make_compressed, make_image, now_ns, StandIn
import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, CompressedImage

S = 1_000_000_000


def stamp_of(msg) -> int:
    return msg.header.stamp.sec * S + msg.header.stamp.nanosec


def compressed_rig(harness, **overrides):
    h = harness(factory=lambda p: StandIn(),
                overrides={'input_transport': 'compressed', **overrides})
    h.listen('left/semantic/labels', 'right/semantic/labels')
    h.start()
    h.wait_connected()
    return h


@pytest.mark.parametrize('codec', ['jpeg', 'png'])
def test_compressed_stereo_in_labels_out_with_the_input_header(harness, stereo_pair, codec):
    h = compressed_rig(harness)
    node = h.seg_node
    assert h.spin_until(lambda: node.count_subscribers(
        f'{h.ns}/left/image_rect_color/compressed') == 1)
    assert node.count_subscribers(f'{h.ns}/left/image_rect_color') == 0
    stamp = now_ns(h.io)
    sent = {cam: make_compressed(rgb, stamp, f'{cam}_optical', codec)
            for cam, rgb in zip(('left', 'right'), stereo_pair)}
    for cam, msg in sent.items():
        h.pubs[cam].publish(msg)
    assert h.spin_until(lambda: h.received['left/semantic/labels']
                        and h.received['right/semantic/labels'])
    for cam, msg in sent.items():
        out = h.received[f'{cam}/semantic/labels'][0]
        assert out.header.frame_id == f'{cam}_optical' and stamp_of(out) == stamp
        rgb = decode_compressed(msg)  # JPEG is lossy: the model saw the decoded pixels
        if codec == 'png':
            np.testing.assert_array_equal(rgb, stereo_pair[('left', 'right').index(cam)])
        labels = np.frombuffer(out.data, np.uint8).reshape(rgb.shape[:2])
        np.testing.assert_array_equal(labels, expected_labels(rgb))
    diag = {kv.key: kv.value for kv in node.diagnostics().values}
    assert diag['input_transport'] == 'compressed'
    assert float(diag['decode_p50_ms']) > 0.0


@pytest.mark.parametrize('sync', ['exact', 'none'])
def test_decoding_runs_on_decode_threads_and_never_holds_the_executor(harness, stereo_pair,
                                                                      monkeypatch, sync):
    threads = []
    release = threading.Event()
    real = node_module.compressed_to_rgb

    def slow_decode(msg, what):
        threads.append(threading.current_thread().name)
        release.wait(5.0)  # a decode that takes long (a huge PNG on a slow CPU)
        return real(msg, what)

    monkeypatch.setattr(node_module, 'compressed_to_rgb', slow_decode)
    h = compressed_rig(harness, decode_threads=1, sync=sync)
    info = h.io.create_publisher(CameraInfo, 'left/camera_info', 10)
    node = h.seg_node
    assert h.spin_until(lambda: info.get_subscription_count() == 1)
    stamp = now_ns(h.io)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: threads)
    # While the decode thread is stuck, the same camera's camera_info (its callbacks share one
    # mutually exclusive group) and further images still get through the executor.
    start = time.monotonic()
    info.publish(camera_info('left', stamp))
    for i in (1, 2):
        h.publish_pair(stereo_pair, stamp + i * S // 30)
    assert h.spin_until(lambda: node.counters.get('left_camera_info') == 1
                        and node.counters.get('left_images') == 3, timeout=3.0)
    assert time.monotonic() - start < 3.0
    release.set()
    last = stamp + 2 * S // 30
    assert h.spin_until(lambda: any(stamp_of(m) == last
                                    for m in h.received['left/semantic/labels']))
    assert all(name.startswith('segment_node-decode') for name in threads), threads
    assert not any('executor' in name.lower() or name == 'MainThread' for name in threads)
    # Newest wins (per camera, or per group with sync exact): what waited behind the stuck
    # decode was dropped and counted; the newest pair came out.
    counters = node.counters
    if sync == 'exact':
        assert counters['decode_dropped_groups'] == 1 and len(threads) == 4  # 2 groups of 2
        diag = {kv.key: kv.value for kv in node.diagnostics().values}
        assert diag['left/dropped'] == diag['right/dropped'] == '1'
    else:
        assert counters['left_decode_dropped'] + counters['right_decode_dropped'] >= 1


@pytest.mark.parametrize('sync', ['exact', 'none'])
def test_unknown_formats_and_corrupt_data_are_counted_and_the_node_goes_on(
        harness, stereo_pair, sync):
    h = compressed_rig(harness, sync=sync)
    node = h.seg_node
    base = now_ns(h.io)
    left = stereo_pair[0]
    bad = []
    msg = make_compressed(left, base, 'left_optical')
    msg.format = 'theora'
    bad.append(msg)
    msg = make_compressed(left, base, 'left_optical')
    msg.format = '16UC1; compressedDepth png'
    bad.append(msg)
    msg = make_compressed(left, base, 'left_optical')  # a JPEG cut in half
    msg.data = msg.data[:len(msg.data) // 2]
    bad.append(msg)
    msg = make_compressed(left, base, 'left_optical')  # says PNG, holds a JPEG
    msg.format = 'rgb8; png compressed bgr8'
    bad.append(msg)
    msg = make_compressed(left, base, 'left_optical')
    msg.data = array.array('B', b'\xff\xd8' + bytes(200))  # JPEG magic, garbage after
    bad.append(msg)
    msg = make_compressed(np.zeros((8, 8, 3), np.uint8), base, 'left_optical', 'png')
    bad.append(msg)  # too small for the model
    for i, msg in enumerate(bad):
        stamp = base + i * S // 30
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, S)
        h.pubs['left'].publish(msg)
        # A good partner: with sync exact a group decodes as a whole and the bad frame drops it.
        h.pubs['right'].publish(make_compressed(stereo_pair[1], stamp, 'right_optical'))
        h.spin_until(lambda: False, timeout=0.1)  # one by one: newest-wins keeps them all
    assert h.spin_until(lambda: node.counters.get('rejected', 0) == 6), node.counters
    counters = node.counters
    assert counters['rejected_bad_format'] == 2
    assert counters['rejected_bad_image'] == 3 and counters['rejected_too_small'] == 1
    assert counters.get('internal_errors', 0) == 0 and node.state == 'active'
    diag = {kv.key: kv.value for kv in node.diagnostics().values}
    assert diag['rejected_bad_format'] == '2'
    if sync == 'exact':
        assert counters['decode_failed_groups'] == 4 and not h.received['left/semantic/labels']
    h.publish_pair(stereo_pair, base + S)
    assert h.spin_until(lambda: h.received['left/semantic/labels'])


def test_labels_compressed_is_a_png_that_decodes_to_exactly_the_labels(harness, stereo_pair):
    h = harness(factory=lambda p: StandIn(), overrides={'label_space': 'category'})
    h.listen('left/semantic/labels')
    h.listen('left/semantic/labels/compressed', msg_type=CompressedImage)
    h.start()
    h.wait_connected()
    stamp = now_ns(h.io)
    h.publish_pair(stereo_pair, stamp)
    assert h.spin_until(lambda: h.received['left/semantic/labels']
                        and h.received['left/semantic/labels/compressed'])
    raw = h.received['left/semantic/labels'][0]
    png = h.received['left/semantic/labels/compressed'][0]
    assert png.format == 'mono8; png compressed '  # image_transport's, for mono8
    assert bytes(png.data[:8]) == b'\x89PNG\r\n\x1a\n'
    assert png.header == raw.header and stamp_of(png) == stamp
    decoded = decode_compressed(png, rgb=False)
    assert decoded.dtype == np.uint8 and decoded.shape == (raw.height, raw.width)
    np.testing.assert_array_equal(decoded, np.frombuffer(raw.data, np.uint8).reshape(
        raw.height, raw.width))
    assert decoded.max() <= 7  # category ids


def test_compressed_outputs_are_only_encoded_when_subscribed(harness, stereo_pair, monkeypatch):
    import cityseg_ros.ros.outputs as outputs_module
    encoded = []
    real = outputs_module.compressed_labels_msg
    monkeypatch.setattr(outputs_module, 'compressed_labels_msg',
                        lambda labels, header: encoded.append(1) or real(labels, header))
    h = harness(factory=lambda p: StandIn())
    h.listen('left/semantic/labels')
    h.start()
    h.wait_connected()
    h.publish_pair(stereo_pair, now_ns(h.io))
    assert h.spin_until(lambda: h.received['left/semantic/labels'])
    assert not encoded and 'left/labels/compressed' not in h.seg_node.published


def test_raw_and_compressed_cameras_keep_their_own_topics(harness, stereo_pair):
    """A raw publisher is not heard by a compressed node (and the diagnostics say so)."""
    h = harness(factory=lambda p: StandIn(), overrides={'input_transport': 'compressed'})
    raw = h.io.create_publisher(type(make_image(stereo_pair[0], 1, 'x')),
                                'left/image_rect_color', 10)
    h.start()
    raw.publish(make_image(stereo_pair[0], now_ns(h.io), 'left_optical'))
    h.spin_until(lambda: False, timeout=0.3)
    assert h.seg_node.counters.get('left_images', 0) == 0
    message = h.seg_node.diagnostics().message
    assert 'left/image_rect_color/compressed' in message, message
