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

"""Image files and encoded buffers to numpy, with checks that turn bad data into clear errors.

An image is hostile until its header is read: :func:`probe_image` reads width and height from
the header (PNG IHDR, JPEG SOF, BMP, PNM, TIFF, WebP) and refuses more than ``max_pixels``
*before* OpenCV allocates anything, so a 2.6 MB PNG that claims 30000x30000 pixels is an error
line, not 5.6 GB of memory. Formats it cannot read a header of are refused.
"""

import contextlib
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import struct
import sys
import tempfile
import threading
from typing import Any, Iterable, Iterator, Optional, Union

from cityseg_ros.errors import ImageError
import cv2
import numpy as np

__all__ = ['IMAGE_SUFFIXES', 'MAX_IMAGE_PIXELS', 'ImageInfo', 'probe_image', 'probe_file',
           'decode_image', 'read_rgb', 'write_png', 'find_images', 'scale_16_to_8',
           'quiet_codec_messages']

_LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.pgm', '.pbm', '.pnm', '.tif',
                  '.tiff', '.webp')
PathLike = Union[str, Path]

#: Largest image accepted by default, in pixels (100 MP: 10000x10000, ~300 MB as RGB). Camera
#: frames are far below it (Cityscapes: 2 MP, 8K video: 33 MP); pass ``max_pixels`` (the CLIs:
#: ``--max-image-pixels``) to go higher.
MAX_IMAGE_PIXELS = 100_000_000

# Bytes per pixel of the largest uncompressed layout OpenCV reads (16-bit RGBA): a file larger
# than this many bytes per allowed pixel (plus metadata room) is refused before it is read.
_MAX_FILE_BYTES_PER_PIXEL = 8
_FILE_SLACK_BYTES = 16 << 20
# Headers are read from this prefix first; the whole file only if the header lies further in
# (a JPEG SOF after large EXIF segments, a TIFF IFD at the end).
_PROBE_PREFIX = 1 << 20

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers carry the size (ITU T.81 table B.1): all SOFn except DHT (C4),
# JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # IHDR colour type -> channels as stored


@dataclass(frozen=True)
class ImageInfo:
    """What an image header says, read before decoding.

    ``channels`` and ``bit_depth`` are as stored (a palette PNG has 3 channels); 0 = unknown.
    ``offset`` is where the header was found (a JPEG's SOF: its scan and end follow it).
    """

    codec: str
    width: int
    height: int
    channels: int = 0
    bit_depth: int = 0
    offset: int = 0

    @property
    def pixels(self) -> int:
        return self.width * self.height


class _Truncated(Exception):
    """The header continues past the bytes given (the caller may read more and retry)."""


def _u8(view: memoryview, pos: int) -> int:
    if pos >= len(view):
        raise _Truncated
    return view[pos]


def _unpack(fmt: str, view: memoryview, pos: int) -> tuple:
    end = pos + struct.calcsize(fmt)
    if end > len(view):
        raise _Truncated
    return struct.unpack(fmt, view[pos:end])


def _png(view: memoryview, what: str) -> ImageInfo:
    length, tag = _unpack('>I4s', view, 8)
    if tag != b'IHDR' or length != 13:
        raise ImageError(f'{what} is a corrupt PNG: the first chunk is not a 13-byte IHDR')
    width, height, depth, ctype = _unpack('>IIBB', view, 16)
    if ctype not in _PNG_CHANNELS:
        raise ImageError(f'{what} is a corrupt PNG: colour type {ctype} does not exist')
    return ImageInfo('png', width, height, _PNG_CHANNELS[ctype], depth)


def _jpeg(view: memoryview, what: str) -> ImageInfo:
    pos = 2
    while True:
        if _u8(view, pos) != 0xFF:
            raise ImageError(f'{what} is a corrupt JPEG: no marker at byte {pos}')
        while _u8(view, pos) == 0xFF:  # fill bytes may precede a marker
            pos += 1
        marker = view[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length field
            continue
        if marker in (0xD9, 0xDA):
            raise ImageError(f'{what} is a corrupt JPEG: image data before any frame header '
                             '(SOF)')
        (length,) = _unpack('>H', view, pos)
        if length < 2:
            raise ImageError(f'{what} is a corrupt JPEG: segment length {length} at byte {pos}')
        if marker in _JPEG_SOF:
            precision, height, width, components = _unpack('>BHHB', view, pos + 2)
            if height == 0:
                raise ImageError(f'{what} is a JPEG whose height is given after the image data '
                                 '(DNL marker); re-encode it')
            return ImageInfo('jpeg', width, height, components, precision, pos)
        pos += length


def _bmp(view: memoryview, what: str) -> ImageInfo:
    (header,) = _unpack('<I', view, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height, _, bits = _unpack('<HHHH', view, 18)
    elif header >= 40:
        width, height, _, bits = _unpack('<iiHH', view, 18)
    else:
        raise ImageError(f'{what} is a corrupt BMP: header size {header}')
    return ImageInfo('bmp', abs(width), abs(height), max(1, bits // 8), 8)


def _pnm(view: memoryview, what: str) -> ImageInfo:
    magic = bytes(view[:2])
    if magic not in (b'P1', b'P2', b'P3', b'P4', b'P5', b'P6'):
        raise ImageError(f'{what}: PNM variant {magic!r} is not supported (use P1..P6)')
    tokens: list[int] = []
    pos = 2
    while len(tokens) < 2:
        char = _u8(view, pos)
        if char == ord('#'):  # comment to the end of the line
            while _u8(view, pos) not in (10, 13):
                pos += 1
        elif chr(char).isdigit():
            start = pos
            while chr(_u8(view, pos)).isdigit():
                pos += 1
                if pos - start > 10:
                    raise ImageError(f'{what} is a corrupt PNM: size field too long')
            tokens.append(int(bytes(view[start:pos])))
            continue
        elif not chr(char).isspace():
            raise ImageError(f'{what} is a corrupt PNM: unexpected byte {char} in the header')
        pos += 1
    channels = 3 if magic in (b'P3', b'P6') else 1
    return ImageInfo('pnm', tokens[0], tokens[1], channels, 8)


def _tiff(view: memoryview, what: str) -> ImageInfo:
    order = '<' if bytes(view[:2]) == b'II' else '>'
    (offset,) = _unpack(order + 'I', view, 4)
    (count,) = _unpack(order + 'H', view, offset)
    if count > 4096:
        raise ImageError(f'{what} is a corrupt TIFF: {count} directory entries')
    size = {}
    for entry in range(count):
        tag, kind, _ = _unpack(order + 'HHI', view, offset + 2 + 12 * entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = order + ('H' if kind == 3 else 'I')
            (size[tag],) = _unpack(fmt, view, offset + 2 + 12 * entry + 8)
    if len(size) != 2:
        raise ImageError(f'{what} is a corrupt TIFF: no width or height in the first directory')
    return ImageInfo('tiff', size[256], size[257])


def _webp(view: memoryview, what: str) -> ImageInfo:
    chunk = bytes(view[12:16])
    if len(chunk) < 4:
        raise _Truncated
    if chunk == b'VP8X':  # extended: 24-bit canvas width - 1, height - 1
        raw = _unpack('<6B', view, 24)
        return ImageInfo('webp', 1 + (raw[0] | raw[1] << 8 | raw[2] << 16),
                         1 + (raw[3] | raw[4] << 8 | raw[5] << 16))
    if chunk == b'VP8L':  # lossless: 14-bit width - 1, height - 1 after the 0x2f signature
        signature, bits = _unpack('<BI', view, 20)
        if signature != 0x2F:
            raise ImageError(f'{what} is a corrupt WebP (lossless signature)')
        return ImageInfo('webp', 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    if chunk == b'VP8 ':  # lossy: key frame start code, then 14-bit width and height
        if bytes(view[23:26]) != b'\x9d\x01\x2a':
            raise ImageError(f'{what} is a corrupt WebP (no VP8 key frame)')
        width, height = _unpack('<HH', view, 26)
        return ImageInfo('webp', width & 0x3FFF, height & 0x3FFF)
    raise ImageError(f'{what} is a WebP with an unknown first chunk {chunk!r}')


def _sniff(head: bytes) -> Optional[str]:
    """Return the codec the magic bytes announce, or None."""
    if head.startswith(_PNG_MAGIC):
        return 'png'
    if head.startswith(b'\xff\xd8'):
        return 'jpeg'
    if head.startswith(b'BM'):
        return 'bmp'
    if head[:1] == b'P' and head[1:2].isdigit():
        return 'pnm'
    if head[:4] in (b'II*\x00', b'MM\x00*'):
        return 'tiff'
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'webp'
    return None


_PARSERS = {'png': _png, 'jpeg': _jpeg, 'bmp': _bmp, 'pnm': _pnm, 'tiff': _tiff, 'webp': _webp}


def _as_view(data: Any) -> memoryview:
    if isinstance(data, np.ndarray):
        return memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    return memoryview(data).cast('B')


def _probe(view: memoryview, max_pixels: int, what: str) -> ImageInfo:
    if len(view) == 0:
        raise ImageError(f'{what} is empty (0 bytes)')
    codec = _sniff(bytes(view[:16]))
    if codec is None:
        raise ImageError(f'{what} is not a readable image: not PNG, JPEG, BMP, PNM, TIFF or '
                         f'WebP (it starts with {bytes(view[:8])!r})')
    info = _PARSERS[codec](view, what)
    if info.width <= 0 or info.height <= 0:
        raise ImageError(f'{what} is a {codec.upper()} of {info.width}x{info.height} pixels: '
                         'width and height must be > 0')
    if info.pixels > max_pixels:
        raise ImageError(f'{what} is a {codec.upper()} of {info.width}x{info.height} = '
                         f'{info.pixels} pixels, more than the limit of {max_pixels} pixels; '
                         'raise the limit (--max-image-pixels / max_pixels) if it is genuine')
    return info


def probe_image(data: Any, max_pixels: int = MAX_IMAGE_PIXELS,
                what: str = 'image') -> ImageInfo:
    """Read format and size from an encoded image's header, without decoding it.

    Args:
        data: the encoded bytes (bytes, bytearray, ``array('B')`` or a uint8 numpy array).
        max_pixels: refuse images with more pixels than this.
        what: how the messages name the data (a path, a topic).

    Raises:
        ImageError: empty, unknown format, corrupt or truncated header, a zero side, or more
            than ``max_pixels`` pixels.
    """
    try:
        return _probe(_as_view(data), max_pixels, what)
    except _Truncated:
        raise ImageError(f'{what} is truncated: the data ends inside the image header') from None


_quiet_codecs = False
_QUIET_LOCK = threading.Lock()


def quiet_codec_messages(enabled: bool = True) -> bool:
    """Keep the codecs' own messages about bad data off stderr; return the previous setting.

    libpng, libjpeg and OpenCV write straight to file descriptor 2 (``libpng error: Not enough
    image data``, ``Corrupt JPEG data: premature end of data segment``), next to the one error
    line of a command-line tool, which says the same. With this on, each decode runs with fd 2
    on a temporary file (decodes take turns), the text is logged at debug level, and a JPEG that
    libjpeg reports cut short (it fills the rest grey) is refused. Only for processes that own
    their stderr, the tools (``run_cli``): another thread's output during a decode lands there
    too, so the node leaves it off.
    """
    global _quiet_codecs
    previous, _quiet_codecs = _quiet_codecs, enabled
    return previous


@contextlib.contextmanager
def _codec_messages(notes: list):
    """Collect what the codecs print on fd 2 into ``notes`` (when quiet, else pass)."""
    if not _quiet_codecs:
        yield
        return
    with _QUIET_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        sink.seek(0)
        notes.extend(sink.read(1 << 16).decode(errors='replace').split('\n'))


def _decode_view(view: memoryview, info: ImageInfo, what: str) -> np.ndarray:
    if info.codec == 'jpeg':
        # OpenCV 4 returns a grey-filled image for a JPEG cut short (5 refuses it): a complete
        # one has a scan (SOS) after its frame header and an end-of-image marker after that.
        # Searching from the SOF skips an EXIF thumbnail's own markers (they come before it).
        if bytes(view[-2:]) != b'\xff\xd9':  # else search (data may follow the image)
            raw = bytes(view[info.offset:])
            scan = raw.find(b'\xff\xda')
            if scan < 0 or raw.find(b'\xff\xd9', scan) < 0:
                raise ImageError(f'{what} is a truncated JPEG (no end-of-image marker)')
    notes: list[str] = []
    try:
        with _codec_messages(notes):
            image = cv2.imdecode(np.frombuffer(view, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageError(f'{what} could not be decoded as {info.codec.upper()}: '
                         f'{str(exc).strip().splitlines()[-1]}') from None
    notes = [note.strip() for note in notes if note.strip()]
    if notes:
        _LOG.debug('%s: the %s decoder said: %s', what, info.codec.upper(), ' | '.join(notes))
    cut_short = any('premature end' in note.lower() for note in notes)
    if image is not None and info.codec == 'jpeg' and cut_short:
        raise ImageError(f'{what} is a corrupt JPEG: its data ends before the image does (the '
                         f'decoder said: {notes[0]})')
    if image is None:
        raise ImageError(f'{what} is not a readable image (corrupt or truncated '
                         f'{info.codec.upper()} data)')
    if image.shape[:2] != (info.height, info.width):
        raise ImageError(f'{what} decoded to {image.shape[1]}x{image.shape[0]} but its header '
                         f'says {info.width}x{info.height} (corrupt file)')
    return image


def decode_image(data: Any, max_pixels: int = MAX_IMAGE_PIXELS,
                 what: str = 'image') -> tuple[np.ndarray, ImageInfo]:
    """Decode an encoded image exactly as stored, after checking its header.

    Returns:
        ``(array, info)``: OpenCV's ``IMREAD_UNCHANGED`` result (HxW grey, HxWx3 BGR or HxWx4
        BGRA; uint8 or uint16) and the header's :class:`ImageInfo`.

    Raises:
        ImageError: as :func:`probe_image`, or data that does not decode to the header's size.
    """
    view = _as_view(data)
    try:
        info = _probe(view, max_pixels, what)
    except _Truncated:
        raise ImageError(f'{what} is truncated: the data ends inside the image header') from None
    return _decode_view(view, info, what), info


def _check_file(path: Path, max_pixels: int) -> int:
    """Return the file's size after checking it is a regular file of plausible size."""
    try:
        if path.is_dir():
            raise ImageError(f'{path} is a directory, not an image file')
        if not path.exists():
            raise ImageError(f'{path} not found')
        if not path.is_file():
            raise ImageError(f'{path} is not a regular file (device, pipe or socket)')
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f'{path} cannot be read: {exc.strerror or exc}') from None
    limit = _MAX_FILE_BYTES_PER_PIXEL * max_pixels + _FILE_SLACK_BYTES
    if size > limit:
        raise ImageError(f'{path} is {size} bytes, more than any image of {max_pixels} pixels '
                         f'needs ({limit}); raise --max-image-pixels / max_pixels if it is '
                         'genuine')
    return size


def _read_bytes(path: Path, count: int = -1) -> bytes:
    try:
        with open(path, 'rb') as f:
            return f.read(count)
    except OSError as exc:
        raise ImageError(f'{path} cannot be read: {exc.strerror or exc}') from None


def probe_file(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Check an image file without decoding it.

    It must be a regular file whose header is readable and within ``max_pixels``. Reads 1 MiB
    unless the header lies further in.

    Raises:
        ImageError: missing, a directory or special file, unreadable, or as :func:`probe_image`.
    """
    path = Path(path)
    size = _check_file(path, max_pixels)
    head = _read_bytes(path, _PROBE_PREFIX)
    try:
        info = _probe(memoryview(head), max_pixels, str(path))
    except _Truncated:
        if len(head) >= size:
            raise ImageError(f'{path} is truncated: the file ends inside the image header') \
                from None
        info = probe_image(_read_bytes(path), max_pixels, str(path))
    _check_end(path, info.codec, size)
    return info


#: Bytes at the end of a file searched for a JPEG's end-of-image marker (encoders may pad).
_JPEG_TAIL = 4096


def _check_end(path: Path, codec: str, size: int) -> None:
    """Refuse a PNG without its IEND chunk or a JPEG without EOI: a file cut short."""
    if codec not in ('png', 'jpeg'):
        return
    try:
        with open(path, 'rb') as f:
            f.seek(max(0, size - _JPEG_TAIL))
            tail = f.read()
    except OSError as exc:
        raise ImageError(f'{path} cannot be read: {exc.strerror or exc}') from None
    complete = (tail.endswith(b'IEND\xaeB`\x82') if codec == 'png'
                else b'\xff\xd9' in tail)
    if not complete:
        raise ImageError(f'{path} is truncated: the {codec.upper()} data has no end marker '
                         '(not a readable image); copy the file again')


def read_rgb(path: PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an 8-bit image file as HxWx3 uint8 RGB (grey is expanded, alpha dropped).

    The header is checked first (:func:`probe_image`): nothing is decoded above
    ``max_pixels`` pixels.

    Raises:
        ImageError: missing, unreadable, too large or undecodable file, or not 8 bits per
            channel.
    """
    path = Path(path)
    _check_file(path, max_pixels)
    image, _ = decode_image(_read_bytes(path), max_pixels, str(path))
    if image.dtype != np.uint8:
        raise ImageError(f'{path} is a {image.dtype} image ({image.dtype.itemsize * 8}-bit); '
                         'convert it to 8-bit RGB first')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def scale_16_to_8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit values to 8 bits as cv_bridge does: ``round(v * 255 / 65535)``.

    cv_bridge (``toCvCopyImpl``) converts 16-bit to 8-bit images with ``convertTo(CV_8U,
    255. / 65535.)``, which rounds to nearest; ``cv2.convertScaleAbs`` is that same
    saturating, rounding conversion (the absolute value changes nothing for unsigned data).
    """
    return cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write HxW (grey/labels, uint8 or uint16) or HxWx3 RGB uint8 as PNG."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', image)
    if not ok:
        raise ImageError(f'could not encode {path} as PNG')
    # Written beside it, then renamed: an interrupted run leaves no half PNG under the name,
    # and a pipe or device of that name is replaced, not written into (which would block).
    path = Path(path)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        buf.tofile(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ImageError(f'cannot write {path}: {exc.strerror or exc}') from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def find_images(paths: Iterable[PathLike], exclude: Optional[PathLike] = None) -> Iterator[Path]:
    """Expand files and directories (searched recursively, sorted) into image files.

    Inside a directory only regular files with an image suffix count (a directory named
    ``x.png`` does not), and nothing under ``exclude`` (an output directory inside the input
    tree, so a second run does not segment the first run's results). A path given explicitly
    is passed on as it is, to be checked.
    """
    skip = Path(os.path.realpath(exclude)) if exclude is not None else None
    for path in map(Path, paths):
        if path.is_dir():
            found = (p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
            if skip is not None:
                found = (p for p in found
                         if not Path(os.path.realpath(p)).is_relative_to(skip))
            yield from sorted(p for p in found if p.is_file())
        else:
            yield path
