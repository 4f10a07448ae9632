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

"""Table: compressed-image decode / encode and label-space cost per 2048x1024 frame.

The node's compressed input path (``decode_compressed``) beside bare OpenCV calls and, when
installed, simplejpeg (libjpeg-turbo as well): same JPEG (the real Cityscapes frame at
image_transport's quality 95), rows interleaved in one run so machine load hits them alike.
Run alone: ``python -m cityseg_ros.bench.codec_table [runs]``.
"""

import sys
import time
import types

from cityseg_ros.bench.timing import markdown_table
from cityseg_ros.compressed import decode_compressed, encode_compressed
from cityseg_ros.label_spaces import get_label_space
from cityseg_ros.render import colorize
import cv2
import numpy as np

_SHARED = 'data/cityscapes'


def _frame():
    """Return (photo, trainId labels, source): the real frame if ../shared is there."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2].parent / 'shared' / _SHARED
    photos = sorted(root.glob('leftImg8bit/*/*/*_leftImg8bit.png'))
    if photos:
        from cityseg_ros.imageio import read_rgb
        gt = sorted(root.glob('gtFine/*/*/*_labelTrainIds.png'))
        labels = cv2.imread(str(gt[0]), cv2.IMREAD_UNCHANGED) if gt else None
        if labels is not None:
            return read_rgb(photos[0]), labels, photos[0].name
    y, x = np.mgrid[0:1024, 0:2048]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    return photo, ((x // 128 + y // 128) % 19).astype(np.uint8), 'synthetic 2048x1024'


def run(runs: int = 20, threads: int = 1) -> str:
    """Time each step ``runs`` times, interleaved, after 3 warm-up rounds."""
    photo, labels, source = _frame()
    fmt, jpg = encode_compressed(photo, 'jpeg', 'rgb8')
    buf = np.frombuffer(jpg, np.uint8)
    msg = types.SimpleNamespace(format=fmt, data=jpg)
    lfmt, png = encode_compressed(labels, 'png', 'mono8')
    lmsg = types.SimpleNamespace(format=lfmt, data=png)
    space = get_label_space('category')
    steps = {
        'cv2.imdecode IMREAD_UNCHANGED (BGR)': lambda: cv2.imdecode(buf, cv2.IMREAD_UNCHANGED),
        'cv2.imdecode + cvtColor BGR2RGB': lambda: cv2.cvtColor(
            cv2.imdecode(buf, cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB),
        'cv2.imdecode IMREAD_COLOR_RGB': lambda: cv2.imdecode(
            buf, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION),
        'cv2.imdecode IMREAD_REDUCED_COLOR_2 (1024x512 out)': lambda: cv2.imdecode(
            buf, cv2.IMREAD_REDUCED_COLOR_2),
        'decode_compressed JPEG -> RGB (header check + decode)': lambda: decode_compressed(msg),
        'decode_compressed label PNG -> mono8': lambda: decode_compressed(lmsg, rgb=False),
        'encode_compressed JPEG q95 (rgb8)': lambda: encode_compressed(photo, 'jpeg', 'rgb8'),
        'encode_compressed label PNG (mono8, level 3)': lambda: encode_compressed(
            labels, 'png', 'mono8'),
        'LabelSpace.map (category, LUT)': lambda: space.map(labels),
        'colorize with a label space palette': lambda: colorize(
            labels, palette=space.train_palette),
    }
    try:
        import simplejpeg
        steps['simplejpeg.decode_jpeg RGB (reference)'] = lambda: simplejpeg.decode_jpeg(
            jpg, colorspace='RGB')
    except ImportError:
        pass
    before = cv2.getNumThreads()
    cv2.setNumThreads(threads)
    samples = {name: [] for name in steps}
    try:
        for round_ in range(runs + 3):
            for name, fn in steps.items():
                start = time.perf_counter()
                fn()
                if round_ >= 3:
                    samples[name].append((time.perf_counter() - start) * 1e3)
    finally:
        cv2.setNumThreads(before)
    rows = [[name, f'{np.median(v):.2f}', f'{np.percentile(v, 95):.2f}', f'{min(v):.2f}']
            for name, v in samples.items()]
    return (f'Input: {source}; JPEG {len(jpg)} bytes (quality 95), label PNG {len(png)} bytes; '
            f'OpenCV {cv2.__version__} with {threads} thread(s); {runs} interleaved runs.\n\n'
            + markdown_table(['step', 'ms (p50)', 'ms (p95)', 'ms (min)'], rows))


if __name__ == '__main__':
    print(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
