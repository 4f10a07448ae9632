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

"""Image files to and from numpy, with the checks that turn bad files into clear errors."""

from pathlib import Path
from typing import Iterable, Iterator, Union

from cityseg_ros.errors import ImageError
import cv2
import numpy as np

__all__ = ['IMAGE_SUFFIXES', 'read_rgb', 'write_png', 'find_images']

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm', '.tif', '.tiff', '.webp')
PathLike = Union[str, Path]


def read_rgb(path: PathLike) -> np.ndarray:
    """Read an 8-bit image file as HxWx3 uint8 RGB (grey is expanded, alpha dropped).

    Raises:
        ImageError: missing or undecodable file, or not 8 bits per channel.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f'{path} not found')
    data = np.fromfile(path, np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageError(f'{path} is not a readable image (corrupt or not an image file)')
    if image.dtype != np.uint8:
        raise ImageError(f'{path} is a {image.dtype} image ({image.dtype.itemsize * 8}-bit); '
                         'convert it to 8-bit RGB first')
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_png(path: PathLike, image: np.ndarray) -> None:
    """Write HxW (grey/labels, uint8 or uint16) or HxWx3 RGB uint8 as PNG."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode('.png', image)
    if not ok:
        raise ImageError(f'could not encode {path} as PNG')
    buf.tofile(str(path))


def find_images(paths: Iterable[PathLike]) -> Iterator[Path]:
    """Expand files and directories (searched recursively, sorted) into image files."""
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path
