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

import array
import struct
import subprocess
import sys
import types
import zlib

from cityseg_ros.compressed import (CompressedFormat, decode_compressed, encode_compressed,
                                    parse_format)
from cityseg_ros.errors import ConfigError, ImageError
from cityseg_ros.imagemsg import image_to_numpy
import cv2
import numpy as np
import pytest


def png_bomb(width: int, height: int, rows_per_block: int = 100) -> bytes:
    """Return a valid RGB PNG of zeros, built without compressing all its pixels.

    After a full flush deflate restarts, so one compressed block of zero rows repeats; zlib's
    adler32 of n zero bytes is ``(n % 65521) << 16 | 1``. 30000x30000 gives 2.6 MB.
    """
    row = b'\x00' * (1 + 3 * width)  # filter byte + pixels
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = row * rows_per_block
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    stream = (b'\x78\xda' + first + unit * (height // rows_per_block - 1)
              + comp.flush(zlib.Z_FINISH)
              + struct.pack('>I', ((height * len(row)) % 65521) << 16 | 1))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + kind + data
                + struct.pack('>I', zlib.crc32(kind + data)))

    ihdr = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', stream)
            + chunk(b'IEND', b''))


def _msg(fmt, data):
    return types.SimpleNamespace(format=fmt, data=data)


def _smooth_rgb(h=48, w=64):
    """Return a smooth colour image: JPEG keeps it within a few levels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1).astype(np.uint8)


@pytest.mark.parametrize('fmt, expected', [
    ('rgb8; jpeg compressed bgr8', ('jpeg', 'rgb8', 'bgr8')),
    ('bgr8; jpeg compressed bgr8', ('jpeg', 'bgr8', 'bgr8')),
    ('mono8; jpeg compressed mono8', ('jpeg', 'mono8', 'mono8')),
    ('bayer_rggb8; jpeg compressed mono8', ('jpeg', 'bayer_rggb8', 'mono8')),
    ('rgb16; jpeg compressed bgr8', ('jpeg', 'rgb16', 'bgr8')),
    ('rgb8; png compressed bgr8', ('png', 'rgb8', 'bgr8')),
    ('rgb16; png compressed bgr16', ('png', 'rgb16', 'bgr16')),
    ('mono8; png compressed ', ('png', 'mono8', 'mono8')),
    ('mono16; png compressed', ('png', 'mono16', 'mono16')),
    ('bayer_grbg8; png compressed ', ('png', 'bayer_grbg8', 'bayer_grbg8')),
    ('jpeg', ('jpeg', '', '')), ('png', ('png', '', '')), ('JPEG', ('jpeg', '', '')),
    ('jpg', ('jpeg', '', '')),
])
def test_parse_format_reads_what_image_transport_writes(fmt, expected):
    assert parse_format(fmt) == CompressedFormat(*expected)


@pytest.mark.parametrize('fmt, reason', [
    ('16UC1; compressedDepth png', 'compressedDepth'),
    ('32FC1; compressedDepth', 'compressedDepth'),
    ('16UC1; compressedDepth rvl', 'compressedDepth'),
    ('rgb8; tiff compressed bgr8', "codec 'tiff'"),
    ('tiff', 'not supported'), ('qoi', 'not supported'), ('', 'not supported'),
    ('rgb8; jpeg compressed bgr16', 'cannot hold'),
    ('rgb8; png compressed ', 'single-channel'),
    ('rgb8; jpeg compressed yuv422', "'yuv422' is"),
    ('rgb8; jpeg', 'not understood'),
])
def test_parse_format_refuses_others_naming_the_format(fmt, reason):
    with pytest.raises(ImageError, match=reason) as info:
        parse_format(fmt)
    assert repr(fmt) in str(info.value)


@pytest.mark.parametrize('encoding, codec, fmt', [
    ('rgb8', 'jpeg', 'rgb8; jpeg compressed bgr8'),
    ('bgra8', 'jpeg', 'bgra8; jpeg compressed bgr8'),
    ('mono8', 'jpeg', 'mono8; jpeg compressed mono8'),
    ('mono16', 'jpeg', 'mono16; jpeg compressed mono8'),
    ('rgb8', 'png', 'rgb8; png compressed bgr8'),
    ('rgb16', 'png', 'rgb16; png compressed bgr16'),
    ('mono8', 'png', 'mono8; png compressed '),
    ('16UC1', 'png', '16UC1; png compressed '),
])
def test_encode_writes_image_transports_format_strings(encoding, codec, fmt):
    channels = {'rgb8': 3, 'bgra8': 4, 'rgb16': 3}.get(encoding, 1)
    dtype = np.uint16 if '16' in encoding else np.uint8
    shape = (8, 12) if channels == 1 else (8, 12, channels)
    got_fmt, data = encode_compressed(np.zeros(shape, dtype), codec, encoding)
    assert got_fmt == fmt and isinstance(data, bytes)
    assert parse_format(got_fmt).codec == codec


@pytest.mark.parametrize('wrap', [bytes, lambda b: array.array('B', b),
                                  lambda b: np.frombuffer(b, np.uint8)],
                         ids=['bytes', 'array', 'numpy'])
def test_jpeg_round_trip_is_rgb_in_any_buffer_type(wrap):
    rgb = _smooth_rgb()
    fmt, data = encode_compressed(rgb, 'jpeg', 'rgb8')
    out = decode_compressed(_msg(fmt, wrap(data)))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 2.0  # a swapped R/B would be ~60 off


def test_png_round_trip_is_exact_and_follows_the_colour_order():
    rgb = _smooth_rgb()
    for encoding, pixels in (('rgb8', rgb), ('bgr8', rgb[..., ::-1])):
        fmt, data = encode_compressed(np.ascontiguousarray(pixels), 'png', encoding)
        assert (decode_compressed(_msg(fmt, data)) == rgb).all(), encoding


def test_old_style_plain_format_uses_opencvs_bgr_order():
    rgb = _smooth_rgb()
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert (decode_compressed(_msg('png', buf.tobytes())) == rgb).all()
    ok, grey = cv2.imencode('.png', rgb[..., 0].copy())
    assert (decode_compressed(_msg('png', grey.tobytes()), rgb=False) == rgb[..., 0]).all()


def test_rgb_compressed_encoding_is_not_swapped():
    rgb = _smooth_rgb()
    ok, buf = cv2.imencode('.png', rgb)  # the RGB bytes stored as they are
    assert (decode_compressed(_msg('rgb8; png compressed rgb8', buf.tobytes())) == rgb).all()


def test_label_png_decodes_exactly_and_stays_single_channel():
    labels = np.random.default_rng(0).integers(0, 19, (37, 53), dtype=np.uint8)
    labels[:3] = 255
    fmt, data = encode_compressed(labels, 'png', 'mono8')
    out = decode_compressed(_msg(fmt, data), rgb=False)
    assert out.dtype == np.uint8 and out.shape == labels.shape and (out == labels).all()
    grey = decode_compressed(_msg(fmt, data))
    assert grey.shape == (37, 53, 3) and (grey[..., 1] == labels).all()


def test_16_bit_png_keeps_16_bits_or_scales_like_cv_bridge():
    values = np.random.default_rng(1).integers(0, 65536, (9, 14), dtype=np.uint16)
    fmt, data = encode_compressed(values, 'png', 'mono16')
    assert (decode_compressed(_msg(fmt, data), rgb=False) == values).all()
    scaled = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert (decode_compressed(_msg(fmt, data))[..., 0] == scaled).all()
    colour = np.random.default_rng(2).integers(0, 65536, (9, 14, 3), dtype=np.uint16)
    fmt, data = encode_compressed(colour, 'png', 'rgb16')
    assert fmt == 'rgb16; png compressed bgr16'
    expected = np.round(colour.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert (decode_compressed(_msg(fmt, data)) == expected).all()


def test_bayer_png_is_demosaiced_like_the_raw_message():
    mosaic = np.random.default_rng(3).integers(0, 256, (8, 12), dtype=np.uint8)
    ok, buf = cv2.imencode('.png', mosaic)
    rgb = decode_compressed(_msg('bayer_rggb8; png compressed ', buf.tobytes()))
    raw = types.SimpleNamespace(height=8, width=12, encoding='bayer_rggb8', is_bigendian=0,
                                step=12, data=mosaic.tobytes())
    assert (rgb == image_to_numpy(raw, rgb=True)).all()


def test_decodes_rosbags_and_rclpy_messages():
    rgb = _smooth_rgb()
    fmt, data = encode_compressed(rgb, 'jpeg', 'rgb8')
    expected = decode_compressed(_msg(fmt, data))
    from rosbags.typesys import get_typestore, Stores
    store = get_typestore(Stores.ROS2_JAZZY)
    header = store.types['std_msgs/msg/Header'](
        stamp=store.types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='cam')
    bag_msg = store.types['sensor_msgs/msg/CompressedImage'](
        header=header, format=fmt, data=np.frombuffer(data, np.uint8))
    assert (decode_compressed(bag_msg) == expected).all()
    sensor_msgs = pytest.importorskip('sensor_msgs.msg', reason='rclpy message wheels absent')
    ros_msg = sensor_msgs.CompressedImage(format=fmt)
    ros_msg.data = array.array('B', data)
    assert (decode_compressed(ros_msg) == expected).all()


def test_bad_data_is_an_image_error_with_the_reason():
    fmt, data = encode_compressed(_smooth_rgb(), 'jpeg', 'rgb8')
    png_fmt, png = encode_compressed(_smooth_rgb(), 'png', 'rgb8')
    with pytest.raises(ImageError, match='no data'):
        decode_compressed(_msg(fmt, b''))
    with pytest.raises(ImageError, match='truncated'):
        decode_compressed(_msg(fmt, data[:len(data) // 2]))
    with pytest.raises(ImageError, match='truncated'):
        decode_compressed(_msg(fmt, data[:20]))
    with pytest.raises(ImageError, match='not a readable image'):
        decode_compressed(_msg(fmt, b'hello, this is not a JPEG at all'))
    with pytest.raises(ImageError, match='says JPEG but the data is a PNG'):
        decode_compressed(_msg(fmt, png))
    with pytest.raises(ImageError, match='corrupt'):
        decode_compressed(_msg(png_fmt, png[:33] + bytes(200)))
    with pytest.raises(ImageError, match=r'says mono8 \(1 channel'):
        decode_compressed(_msg('mono8; jpeg compressed mono8', data))


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.find(b'\xff\xc0')
    return data[:sof + 5] + struct.pack('>HH', height, width) + data[sof + 9:]


def test_pixel_limit_is_checked_in_the_header_and_can_be_raised():
    rgb = _smooth_rgb(64, 64)
    fmt, data = encode_compressed(rgb, 'jpeg', 'rgb8')
    with pytest.raises(ImageError, match='64x64 = 4096 pixels, more than the limit of 4000'):
        decode_compressed(_msg(fmt, data), max_pixels=4000)
    assert decode_compressed(_msg(fmt, data), max_pixels=4096).shape == (64, 64, 3)
    huge = _patch_jpeg_size(data, 30000, 30000)
    with pytest.raises(ImageError, match='30000x30000'):
        decode_compressed(_msg(fmt, huge))


def test_png_bomb_is_refused_before_decoding_under_a_memory_limit(tmp_path):
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_bomb(30000, 30000))
    assert bomb.stat().st_size < 3_000_000
    code = (
        'import resource, sys, types\n'
        'resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n'
        'from cityseg_ros.compressed import decode_compressed\n'
        'from cityseg_ros.errors import ImageError\n'
        f'data = open({str(bomb)!r}, "rb").read()\n'
        'try:\n'
        '    decode_compressed(types.SimpleNamespace(format="rgb8; png compressed bgr8", '
        'data=data))\n'
        'except ImageError as exc:\n'
        '    print(exc)\n'
        '    sys.exit(3)\n')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 3, result.stderr
    assert '30000x30000 = 900000000 pixels, more than the limit' in result.stdout


def test_png_bomb_helper_makes_a_valid_png():
    small = cv2.imdecode(np.frombuffer(png_bomb(300, 200), np.uint8), cv2.IMREAD_UNCHANGED)
    assert small.shape == (200, 300, 3) and not small.any()


@pytest.mark.parametrize('args, reason', [
    ((np.zeros((4, 4, 3), np.uint8), 'gif', 'rgb8'), 'codec'),
    ((np.zeros((4, 4, 3), np.uint8), 'jpeg', 'yuv422'), 'cannot compress'),
    ((np.zeros((4, 4), np.uint8), 'jpeg', 'rgb8'), 'HxWx3 uint8'),
    ((np.zeros((4, 4, 3), np.uint16), 'png', 'rgb8'), 'uint8'),
    ((np.zeros((0, 4, 3), np.uint8), 'png', 'rgb8'), 'HxWx3'),
    ((np.zeros((4, 4), np.uint8), 'jpeg', '8UC1'), 'use png'),
])
def test_encode_refuses_what_cannot_work(args, reason):
    with pytest.raises(ConfigError, match=reason):
        encode_compressed(*args)
    with pytest.raises(ConfigError, match='quality'):
        encode_compressed(np.zeros((4, 4, 3), np.uint8), 'jpeg', 'rgb8', quality=0)


def test_real_frame_jpeg_95_decodes_close_to_the_png(cityscapes_root):
    from cityseg_ros.imageio import read_rgb
    path = sorted((cityscapes_root / 'leftImg8bit').rglob('*_leftImg8bit.png'))[0]
    rgb = read_rgb(path)
    fmt, data = encode_compressed(rgb, 'jpeg', 'rgb8')
    out = decode_compressed(_msg(fmt, data))
    assert out.shape == (1024, 2048, 3)
    assert np.abs(out.astype(np.int16) - rgb).mean() < 2.0


@pytest.mark.parametrize('ext, codec', [('.png', 'png'), ('.jpg', 'jpeg'), ('.bmp', 'bmp'),
                                        ('.ppm', 'pnm'), ('.pgm', 'pnm'), ('.tiff', 'tiff'),
                                        ('.webp', 'webp')])
def test_probe_reads_the_size_of_every_format_before_decoding(ext, codec):
    from cityseg_ros.imageio import decode_image, probe_image
    shape = (37, 53) if ext == '.pgm' else (37, 53, 3)
    ok, buf = cv2.imencode(ext, np.random.default_rng(4).integers(0, 256, shape, np.uint8))
    assert ok
    info = probe_image(buf.tobytes())
    assert (info.codec, info.width, info.height) == (codec, 53, 37)
    with pytest.raises(ImageError, match='more than the limit'):
        probe_image(buf, max_pixels=53 * 37 - 1)
    image, info = decode_image(buf, max_pixels=53 * 37)
    assert image.shape[:2] == (37, 53)
    with pytest.raises(ImageError, match='truncated|corrupt'):
        probe_image(buf.tobytes()[:{'tiff': 9, 'pnm': 5}.get(codec, 12)])
