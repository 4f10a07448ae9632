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

"""Table: 1, 2, 4 and 6 cameras of 1920x1080 into one ESPNetv2 node.

Per row, ``segment_node`` (random weights: timing only) and a rig player
(:mod:`cityseg_ros.ros.rig_player`) run as two processes, so this module needs no rclpy. The
player streams N cameras at ``rate_hz`` each (JPEG as image_transport writes it, or raw rgb8)
and times every camera's labels. Columns: frames/s out (all cameras), per-camera output rate
(min / max: the fairness check, within 20 % of each other), stamp -> labels latency p50/p95,
frames dropped per camera (newest wins when the model is slower than the cameras), decode
and inference ms from the node's ``/diagnostics``. Rows run one after another with a fresh
node each. ``python -m cityseg_ros.bench.cameras_table [seconds]``.
"""

import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple
import uuid

from cityseg_ros.bench.timing import markdown_table

__all__ = ['run', 'CAMERA_COUNTS', 'RIG', 'camera_names']

#: Rows of the table.
CAMERA_COUNTS = (1, 2, 4, 6)
#: A vehicle's six cameras, in the order the rows add them.
RIG = ('front', 'rear', 'front_left', 'front_right', 'rear_left', 'rear_right')
HEADER = ['cameras', 'transport / sync', 'in Hz per camera', 'frames/s out (all)',
          'out Hz per camera (min / max)', 'latency ms p50', 'latency ms p95',
          'dropped per camera', 'decode ms p50', 'inference ms p50 (batch)']


def camera_names(count: int) -> List[str]:
    """Return the first ``count`` rig cameras (beyond six: cam6, cam7, ...)."""
    return [RIG[i] if i < len(RIG) else f'cam{i}' for i in range(count)]


def _node(namespace: str, cameras: Sequence[str], model: str, device: str, transport: str,
          sync: str) -> subprocess.Popen:
    params = {'model': model, 'weights': "''", 'device': device,
              'cameras': '[' + ','.join(cameras) + ']', 'sync': sync,
              'input_transport': transport, 'publish_color': 'false',
              'publish_overlay': 'false'}
    cmd = [sys.executable, '-m', 'cityseg_ros.ros.node', '--ros-args', '-r',
           f'__ns:={namespace}']
    for name, value in params.items():
        cmd += ['-p', f'{name}:={value}']
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _play(namespace: str, cameras: Sequence[str], size: Tuple[int, int], rate_hz: float,
          seconds: float, transport: str, sync: str) -> Dict:
    cmd = [sys.executable, '-m', 'cityseg_ros.ros.rig_player', '--cameras', ','.join(cameras),
           '--height', str(size[0]), '--width', str(size[1]), '--rate', str(rate_hz),
           '--seconds', str(seconds), '--transport', transport, '--sync', sync,
           '--ros-args', '-r', f'__ns:={namespace}']
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {'error': f'player exited {proc.returncode}: {" / ".join(tail)}'}
    return json.loads(lines[-1])


def _row(count: int, result: Dict, transport: str, sync: str, rate_hz: float) -> List[str]:
    if 'error' in result:
        return [str(count), f'{transport} / {sync}', f'{rate_hz:g}', 'error: ' +
                result['error'], '', '', '', '', '', '']
    seconds = float(result['seconds'])
    received = result['received']
    diag = result.get('diagnostics', {})
    rates = [n / seconds for n in received.values()]

    def ms(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{value:.0f}'

    start = result.get('diagnostics_start', {})

    def dropped_in_window(cam: str) -> str:
        key = f'{cam}/dropped'
        if key not in diag:
            return '?'
        return str(int(diag[key]) - int(start.get(key, 0)))

    dropped = ', '.join(f'{cam} {dropped_in_window(cam)}' for cam in received)
    return [str(count), f'{transport} / {sync}', f'{rate_hz:g}',
            f'{sum(received.values()) / seconds:.2f}',
            f'{min(rates):.2f} / {max(rates):.2f}',
            ms(result.get('latency_p50_ms')), ms(result.get('latency_p95_ms')), dropped,
            diag.get('decode_p50_ms', 'n/a'), diag.get('inference_p50_ms', 'n/a')]


def run(runs: int = 5, model: str = 'espnetv2', device: str = 'auto',
        counts: Sequence[int] = CAMERA_COUNTS, size: Tuple[int, int] = (1080, 1920),
        rate_hz: float = 10.0, transport: str = 'compressed', sync: str = 'none',
        seconds: Optional[float] = None) -> str:
    """Measure each camera count for ``seconds`` (default ``3 * runs``) after a warm-up."""
    seconds = float(seconds if seconds is not None else max(10.0, 3.0 * runs))
    rows = []
    for count in counts:
        namespace = f'/cityseg_rig_{uuid.uuid4().hex[:6]}'
        cameras = camera_names(count)
        node = _node(namespace, cameras, model, device, transport, sync)
        try:
            result = _play(namespace, cameras, size, rate_hz, seconds, transport, sync)
        finally:
            node.terminate()
            try:
                _, err = node.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                node.kill()
                _, err = node.communicate()
        if 'error' in result and err:
            result['error'] += ' | node: ' + ' / '.join(err.strip().splitlines()[-2:])
        rows.append(_row(count, result, transport, sync, rate_hz))
    note = (f'{size[1]}x{size[0]} per camera at {rate_hz:g} Hz each, {seconds:.0f} s measured '
            f'after 5 s warm-up, {model} (random weights) on {device}; latency = header stamp '
            '-> labels received by the player process; FASTRTPS_DEFAULT_PROFILES_FILE='
            f'{os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE", "unset")}.')
    return note + '\n\n' + markdown_table(HEADER, rows)


if __name__ == '__main__':
    print(run(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else None))
