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

from fractions import Fraction
import os
import struct
import subprocess
import sys
import zlib

from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.tools import segment_images
import cv2
import numpy as np
import pytest

REAL_FRAMES = 8


def _run(capsys, *argv):
    code = segment_images.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.slow
def test_official_weights_score_on_real_frames(tmp_path, capsys, cityscapes_root,
                                               espnetv2_weights, official_eval):
    images = sorted((cityscapes_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))
    assert len(images) == REAL_FRAMES
    code, err = _run(capsys, '--model', 'espnetv2', '--weights', espnetv2_weights,
                     '--device', 'cpu', '--out', tmp_path, '--label-ids', '--no-train-ids',
                     '--batch-size', 2, '--quiet', *images)
    assert code == 0, err
    gts = [cityscapes_root / 'gtFine' / 'train' / p.parent.name /
           p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png') for p in images]
    preds = [tmp_path / (p.stem + '_labelIds.png') for p in images]
    result = official_eval(preds, gts)
    miou = result['averageScoreClasses']
    print(f'official evaluation on {len(images)} frames: class mIoU {miou:.4f}, '
          f"iIoU {result['averageScoreInstClasses']:.4f}, "
          f"category IoU {result['averageScoreCategories']:.4f}, "
          f"category iIoU {result['averageScoreInstCategories']:.4f}")
    assert miou >= 0.55


def test_writes_requested_outputs_at_input_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / 'cam_000001.png'
    write_png(src, rng.integers(0, 256, (72, 136, 3), dtype=np.uint8))
    out = tmp_path / 'out'
    code, err = _run(capsys, '--weights', 'none', '--device', 'cpu', '--input-size', '64x128',
                     '--out', out, '--color', '--overlay', '--label-ids', '--confidence',
                     '--quiet', src)
    assert code == 0, err
    for suffix in ('trainIds', 'labelIds', 'color', 'overlay', 'confidence'):
        assert (out / f'cam_000001_{suffix}.png').is_file(), suffix
    train_ids = read_rgb(out / 'cam_000001_trainIds.png')[..., 0]
    assert train_ids.shape == (72, 136)
    assert train_ids.max() < 19  # channel 19 (EdgeNets' untrained background) never output


@pytest.fixture
def bad_inputs(tmp_path):
    not_png = tmp_path / 'not_an_image.png'
    not_png.write_bytes(b'this is text, not a PNG')
    tiny = tmp_path / 'tiny.png'
    write_png(tiny, np.zeros((1, 1, 3), np.uint8))
    deep = tmp_path / 'deep.png'
    write_png(deep, np.zeros((64, 64), np.uint16))
    return {'not_png': not_png, 'tiny': tiny, 'deep': deep}


@pytest.mark.parametrize('case, message', [
    ('not_png', 'not a readable image'),
    ('tiny', 'smallest accepted side'),
    ('deep', '16-bit'),
])
def test_bad_images_exit_2_with_one_line(tmp_path, capsys, bad_inputs, case, message):
    code, err = _run(capsys, '--weights', 'none', '--device', 'cpu', '--input-size', '64x128',
                     '--out', tmp_path / 'out', '--quiet', bad_inputs[case])
    assert code == 2
    assert message in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


def test_missing_weights_file_exit_2(tmp_path, capsys):
    src = tmp_path / 'img.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    code, err = _run(capsys, '--weights', tmp_path / 'nope.pth', '--out', tmp_path / 'o', src)
    assert code == 2 and 'nope.pth' in err and 'Traceback' not in err


def test_checkpoint_of_another_model_exit_2(tmp_path, capsys):
    import torch
    other = tmp_path / 'hrnet.pth'
    torch.save({'model.conv1.weight': torch.zeros(64, 3, 3, 3)}, other)
    src = tmp_path / 'img.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    code, err = _run(capsys, '--weights', other, '--out', tmp_path / 'o', src)
    assert code == 2 and 'espnetv2' in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('payload', [{'a': [1, 2, 3]}, Fraction(1, 3)],
                         ids=['dict-of-lists', 'arbitrary-object'])
def test_pickle_that_is_not_a_state_dict_exit_2(tmp_path, capsys, payload):
    import pickle
    bad = tmp_path / 'evil.pth'
    bad.write_bytes(pickle.dumps(payload))
    src = tmp_path / 'img.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    code, err = _run(capsys, '--weights', bad, '--out', tmp_path / 'o', src)
    assert code == 2 and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


# -- files with the same name, bombs, bad options and bad inputs (issue 11 items 10, 12, 13) --

FAST = ('--weights', 'none', '--device', 'cpu', '--input-size', '64x128', '--quiet')


def png_bomb(width: int, height: int, rows_per_block: int = 100) -> bytes:
    """Return a valid RGB PNG of zeros, built without compressing all its pixels.

    After a full flush deflate restarts, so one compressed block of zero rows repeats; zlib's
    adler32 of n zero bytes is ``(n % 65521) << 16 | 1``. 30000x30000 gives 2.6 MB.
    """
    row = b'\x00' * (1 + 3 * width)
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


def _image(path, h=48, w=64, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def _one_error_line(code, err):
    assert code == 2, err
    assert 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1, err


def test_same_name_in_two_directories_keeps_the_layout(tmp_path, capsys):
    a = _image(tmp_path / 'in' / 'a' / 'x.png', seed=1)
    b = _image(tmp_path / 'in' / 'b' / 'x.png', seed=2)
    out = tmp_path / 'out'
    code = segment_images.main([str(a), str(b), '--out', str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / 'a' / 'x_trainIds.png').is_file() and (out / 'b' / 'x_trainIds.png').is_file()
    assert not (out / 'x_trainIds.png').exists()
    assert 'wrote 2 result(s)' in captured.out


def test_distinct_names_stay_flat_and_a_file_named_twice_counts_once(tmp_path, capsys):
    a = _image(tmp_path / 'a' / 'x.png')
    b = _image(tmp_path / 'b' / 'y.png')
    out = tmp_path / 'out'
    code = segment_images.main([str(a), str(b), str(tmp_path / 'a' / '..' / 'a' / 'x.png'),
                                '--out', str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.iterdir()) == ['x_trainIds.png', 'y_trainIds.png']
    assert 'wrote 2 result(s)' in captured.out


def test_two_inputs_one_stem_in_one_directory_are_refused(tmp_path, capsys):
    _image(tmp_path / 'd' / 'x.png')
    _image(tmp_path / 'e' / 'x.png')
    jpg = tmp_path / 'd' / 'x.jpg'
    import cv2
    cv2.imwrite(str(jpg), np.zeros((48, 64, 3), np.uint8))
    code, err = _run(capsys, tmp_path / 'd', tmp_path / 'e', '--out', tmp_path / 'out', *FAST)
    _one_error_line(code, err)
    assert 'would both be written' in err and 'x.jpg' in err


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path, capsys):
    out = tmp_path / 'out'
    victim = _image(out / 'y_trainIds.png')
    src = _image(tmp_path / 'src' / 'y.png')
    code, err = _run(capsys, src, victim, '--out', out, *FAST)
    _one_error_line(code, err)
    assert 'is also an input' in err


def test_outputs_inside_the_input_tree_are_not_segmented_again(tmp_path, capsys):
    _image(tmp_path / 'frames' / 'f.png')
    out = tmp_path / 'frames' / 'seg'
    for _ in range(2):
        code = segment_images.main([str(tmp_path / 'frames'), '--out', str(out), *FAST])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert 'wrote 1 result(s)' in captured.out
    assert sorted(p.name for p in out.iterdir()) == ['f_trainIds.png']


def test_png_bomb_is_refused_from_its_header_under_a_memory_limit(tmp_path):
    bomb = tmp_path / 'bomb.png'
    bomb.write_bytes(png_bomb(30000, 30000))
    assert bomb.stat().st_size < 3_000_000
    code = ('import resource, sys\n'
            'resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n'
            'from cityseg_ros.tools import segment_images\n'
            'sys.exit(segment_images.main(sys.argv[1:]))\n')
    result = subprocess.run([sys.executable, '-c', code, *FAST, '--out', str(tmp_path / 'o'),
                             str(bomb)], capture_output=True, text=True, timeout=300)
    _one_error_line(result.returncode, result.stderr)
    assert '30000x30000 = 900000000 pixels, more than the limit of 100000000' in result.stderr
    assert '--max-image-pixels' in result.stderr


def test_max_image_pixels_is_the_documented_limit_and_can_be_changed(tmp_path, capsys):
    src = _image(tmp_path / 'img.png', 48, 64)
    code, err = _run(capsys, src, '--out', tmp_path / 'o', '--max-image-pixels', 3000, *FAST)
    _one_error_line(code, err)
    assert '64x48 = 3072 pixels, more than the limit of 3000' in err
    assert segment_images.main([str(src), '--out', str(tmp_path / 'o'),
                                '--max-image-pixels', '3072', *FAST]) == 0


@pytest.mark.parametrize('option, message', [
    (('--input-size', '100000x100000'), '1..8192'),
    (('--input-size', '0x128'), '1..8192'),
    (('--input-size=-64x128',), '1..8192'),
    (('--input-size', 'nanxnan'), 'not HxW'),
    (('--input-size', '64'), 'not HxW'),
    (('--batch-size', '0'), '>= 1'),
    (('--batch-size', '100000'), 'at most 64'),
    (('--alpha', 'nan'), '[0, 1]'),
    (('--alpha', '1.5'), '[0, 1]'),
    (('--max-image-pixels', '0'), '>= 1'),
    (('--max-image-pixels', '1e9'), 'not an integer'),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, option, message):
    src = _image(tmp_path / 'img.png')
    with pytest.raises(SystemExit) as info:
        segment_images.main([str(src), '--out', str(tmp_path / 'o'), '--weights', 'none',
                             *option])
    err = capsys.readouterr().err
    _one_error_line(info.value.code, err)
    assert message in err and option[0].split('=')[0] in err


def test_out_that_is_a_file_exit_2(tmp_path, capsys):
    src = _image(tmp_path / 'img.png')
    out = tmp_path / 'out.txt'
    out.write_text('not a directory')
    code, err = _run(capsys, src, '--out', out, *FAST)
    _one_error_line(code, err)
    assert 'is not a directory' in err
    assert out.read_text() == 'not a directory'


def test_out_under_a_file_exit_2(tmp_path, capsys):
    src = _image(tmp_path / 'img.png')
    (tmp_path / 'file').write_text('x')
    code, err = _run(capsys, src, '--out', tmp_path / 'file' / 'out', *FAST)
    _one_error_line(code, err)
    assert 'cannot be created' in err


@pytest.fixture
def hostile(tmp_path):
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    folder = tmp_path / 'folder.png'
    folder.mkdir()
    fifo = tmp_path / 'fifo.png'
    os.mkfifo(fifo)
    dangling = tmp_path / 'dangling.png'
    dangling.symlink_to(tmp_path / 'nowhere.png')
    full = _image(tmp_path / 'full.png')
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes(full.read_bytes()[:200])
    header_only = tmp_path / 'header_only.png'
    header_only.write_bytes(full.read_bytes()[:20])
    jpeg_bomb = tmp_path / 'huge.jpg'
    import cv2
    ok, buf = cv2.imencode('.jpg', np.zeros((8, 8, 3), np.uint8))
    data = buf.tobytes()
    sof = data.find(b'\xff\xc0')
    jpeg_bomb.write_bytes(data[:sof + 5] + struct.pack('>HH', 60000, 60000) + data[sof + 9:])
    unknown = tmp_path / 'unknown.webp'
    unknown.write_bytes(b'GIF89a' + bytes(100))
    return {'empty': empty, 'folder': folder, 'fifo': fifo, 'dangling': dangling,
            'truncated': truncated, 'header_only': header_only, 'jpeg_bomb': jpeg_bomb,
            'unknown': unknown}


@pytest.mark.parametrize('case, message', [
    ('empty', 'empty (0 bytes)'),
    ('folder', 'no image files found'),
    ('fifo', 'not a regular file'),
    ('dangling', 'not found'),
    ('truncated', 'not a readable image'),
    ('header_only', 'truncated'),
    ('jpeg_bomb', '60000x60000'),
    ('unknown', 'not a readable image'),
])
def test_hostile_inputs_exit_2_with_one_line(tmp_path, capsys, hostile, case, message):
    code, err = _run(capsys, hostile[case], '--out', tmp_path / 'out', *FAST)
    _one_error_line(code, err)
    assert message in err


def test_directories_named_like_images_inside_an_input_directory_are_skipped(tmp_path, capsys):
    _image(tmp_path / 'in' / 'real.png')
    (tmp_path / 'in' / 'fake.png').mkdir()
    code = segment_images.main([str(tmp_path / 'in'), '--out', str(tmp_path / 'out'), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert 'wrote 1 result(s)' in captured.out


def test_a_file_larger_than_any_allowed_image_is_refused_unread(tmp_path, capsys):
    big = tmp_path / 'big.png'
    with open(big, 'wb') as f:
        f.truncate(20 << 20)  # sparse: costs no disk
    code, err = _run(capsys, big, '--out', tmp_path / 'out', '--max-image-pixels', 1000, *FAST)
    _one_error_line(code, err)
    assert 'is 20971520 bytes, more than any image of 1000 pixels' in err


def _tiff(entries, data):
    """Return a little-endian TIFF with one directory of (tag, type, value) LONG/SHORT entries."""
    head = b'II*\x00' + struct.pack('<IH', 8, len(entries))
    for tag, kind, value in entries:
        field = struct.pack('<I', value) if kind == 4 else struct.pack('<HH', value, 0)
        head += struct.pack('<HHI', tag, kind, 1) + field
    return head + b'\0\0\0\0' + data


def _chatty_images(tmp_path):
    """Files whose decoders print on fd 2 by themselves (libpng, libjpeg, libtiff, OpenCV)."""
    ok, jpeg = cv2.imencode('.jpg', np.zeros((64, 128, 3), np.uint8))
    jpeg = bytearray(jpeg.tobytes())
    sof = jpeg.index(b'\xff\xc0')
    jpeg[sof + 5:sof + 9] = struct.pack('>HH', 600, 800)  # the data holds 64x128
    ihdr = struct.pack('>IIBBBBB', 600, 800, 8, 6, 0, 0, 0)

    def chunk(tag, data):
        return (struct.pack('>I', len(data)) + tag + data
                + struct.pack('>I', zlib.crc32(tag + data)))

    png = (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + chunk(b'IDAT', zlib.compress(bytes(99)))
           + chunk(b'IEND', b''))
    data_at = 8 + 2 + 12 * 11 + 4  # width and height given twice, unsorted: libtiff warns
    tiff = _tiff([(256, 4, 30000), (256, 4, 32), (257, 4, 30000), (257, 4, 32), (258, 3, 8),
                  (259, 3, 1), (262, 3, 1), (273, 4, data_at), (277, 3, 1), (278, 4, 30000),
                  (279, 4, 1024)], bytes(1024))
    bmp_info = struct.pack('<IiiHHIIiiII', 40, 32, 32, 1, 8, 0, 0, 0, 0, 0x7FFFFFFF, 0)
    files = {'lying_sof.jpg': bytes(jpeg), 'short_idat.png': png, 'dup_tags.tif': tiff,
             'huge_maxval.pgm': b'P5 32 32 99999999999999\n' + bytes(1024),
             'palette_of_2g.bmp': b'BM' + struct.pack('<IHHI', 54 + 64, 0, 0, 54) + bmp_info
             + bytes(64)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


def test_codec_messages_stay_off_stderr_and_a_grey_filled_jpeg_is_refused(tmp_path, capfd):
    """Decoder chatter on fd 2 is kept off; the error line says it.

    Before: 'libpng error: ...', '[ERROR:0@0.3] ... grfmt_tiff.cpp' etc. next to the error
    line, and a JPEG whose frame header claims more than its data held was segmented.
    """
    for path in _chatty_images(tmp_path):
        code = segment_images.main(['--weights', 'none', '--device', 'cpu', '--input-size',
                                    '64x128', '--out', str(tmp_path / 'out'), '--quiet',
                                    str(path)])
        err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if 'RANDOM' not in line]
        assert code == 2 and len(lines) == 1, (path.name, err)
        assert lines[0].startswith(f'segment_images: error: {path}'), err
        assert not list((tmp_path / 'out').glob('*.png')), path.name


def test_a_pipe_where_an_output_goes_is_replaced_not_written_into(tmp_path, capsys):
    """Outputs are written beside and renamed: no half PNG under the name, no blocked write.

    Before: writing the PNG into the FIFO blocked forever.
    """
    src = tmp_path / 'cam.png'
    write_png(src, np.zeros((64, 128, 3), np.uint8))
    out = tmp_path / 'out'
    out.mkdir()
    os.mkfifo(out / 'cam_trainIds.png')
    code, err = _run(capsys, '--weights', 'none', '--device', 'cpu', '--input-size', '64x128',
                     '--out', out, '--quiet', src)
    assert code == 0, err
    assert (out / 'cam_trainIds.png').is_file()
    assert read_rgb(out / 'cam_trainIds.png').shape == (64, 128, 3)
    assert sorted(p.name for p in out.iterdir()) == ['cam_trainIds.png']  # no temporary left
