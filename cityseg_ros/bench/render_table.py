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

"""Table: colorize / overlay / label-map encode cost per 2048x1024 frame (the node's worker)."""

from cityseg_ros import render
from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.imageio import write_png
import numpy as np


def run(runs: int = 10) -> str:
    """Time each rendering step on a random 2048x1024 label map and photo."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, (1024, 2048), dtype=np.uint8)
    photo = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    color = render.colorize(labels)
    steps = {
        'colorize (palette LUT)': lambda: render.colorize(labels),
        'overlay (blend, from colors)': lambda: render.overlay(photo, labels, 0.5, color),
        'naive numpy PALETTE[labels] (for reference)': lambda: render.PALETTE[labels],
        'labels -> bytes (message data)': lambda: labels.tobytes(),
        'rgb -> bytes (message data)': lambda: color.tobytes(),
        'labels -> PNG file (/dev/null)': lambda: write_png('/dev/null', labels),
    }
    rows = []
    for name, fn in steps.items():
        t = time_call(fn, runs=runs)
        rows.append([name, f'{t.median_ms:.2f}', f'{t.p95_ms:.2f}'])
    return markdown_table(['step', 'ms (p50)', 'ms (p95)'], rows)
