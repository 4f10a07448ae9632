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

"""A camera rig in one process: N cameras stream into a running segment_node, labels are timed.

The player for the cameras benchmark (:mod:`cityseg_ros.bench.cameras_table`, which starts the
node and this player as separate processes, so the table module needs no rclpy). Each camera
publishes the same 1920x1080 frame (its own crop of the real Cityscapes frame when
``../shared`` is there) at ``--rate`` Hz, reliable like a driver, raw rgb8 or JPEG as
image_transport writes it (quality 95); with ``--sync none`` the cameras run at staggered
phases (free-running), with ``exact`` all share each stamp. The labels of every camera are
received and stamp -> arrival is timed after a warm-up. One JSON line on stdout: per camera
frames sent and received, output rate and latency, and the node's last ``/diagnostics``.

``python -m cityseg_ros.ros.rig_player --cameras front,rear --seconds 15 --ros-args -r
__ns:=/rig``
"""

import argparse
import array
import json
from pathlib import Path
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

from cityseg_ros.compressed import encode_compressed
from cityseg_ros.worker import LatencyWindow
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

__all__ = ['rig_frames', 'play', 'main']

S = 1_000_000_000


def rig_frames(count: int, size: Tuple[int, int]) -> List[np.ndarray]:
    """Return one HxWx3 uint8 RGB frame per camera: crops of the real frame, else synthetic."""
    height, width = size
    root = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'cityscapes'
    photos = sorted(root.glob('leftImg8bit/*/*/*_leftImg8bit.png'))
    frames = []
    if photos:
        import cv2
        from cityseg_ros.imageio import read_rgb
        base = read_rgb(photos[0])
        for i in range(count):  # each camera its own view: a shifted crop, scaled
            x0 = (i * 97) % max(1, base.shape[1] // 8)
            crop = base[:, x0:x0 + base.shape[1] * 7 // 8]
            frames.append(cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA))
        return frames
    y, x = np.mgrid[0:height, 0:width]
    for i in range(count):
        frames.append(np.stack([(x + 13 * i) % 256, y % 256, (x + y) % 256], -1)
                      .astype(np.uint8))
    return frames


def _message(rgb: np.ndarray, camera: str, transport: str):
    if transport == 'compressed':
        msg = CompressedImage()
        msg.format, data = encode_compressed(rgb, 'jpeg', 'rgb8')
        msg.data = array.array('B', data)
    else:
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                    step=rgb.shape[1] * 3)
        data = array.array('B')
        data.frombytes(np.ascontiguousarray(rgb))
        msg.data = data
    msg.header.frame_id = f'{camera}_optical'
    return msg


class _Labels:
    """Per camera: labels received and stamp -> arrival latency, after the warm-up."""

    def __init__(self, node, cameras: Sequence[str]) -> None:
        self._node = node
        self._lock = threading.Lock()
        self.counting = False
        self.received = dict.fromkeys(cameras, 0)
        self.latency = LatencyWindow(100000)
        self.per_camera = {cam: LatencyWindow(100000) for cam in cameras}
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = [node.create_subscription(Image, f'{cam}/semantic/labels',
                                              self._callback(cam), qos) for cam in cameras]

    def _callback(self, camera: str):
        def on_labels(msg: Image) -> None:
            if not self.counting:
                return
            stamp = msg.header.stamp.sec * S + msg.header.stamp.nanosec
            ms = (self._node.get_clock().now().nanoseconds - stamp) / 1e6
            with self._lock:
                self.received[camera] += 1
            self.latency.add(ms)
            self.per_camera[camera].add(ms)
        return on_labels


def play(cameras: Sequence[str], size: Tuple[int, int], rate_hz: float, seconds: float,
         transport: str, sync: str, warmup_s: float = 5.0, ready_timeout_s: float = 300.0
         ) -> Dict:
    """Stream the rig into the node of this process's namespace; return the measurements.

    rclpy must be initialised; the node lives in ``--ros-args -r __ns:=...``'s namespace.
    """
    node = rclpy.create_node('cityseg_rig_player')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    diag: Dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(node.get_namespace().rstrip('/') + '/segment_node'):
                diag.clear()
                diag.update({kv.key: kv.value for kv in status.values},
                            _message=status.message)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    try:
        labels = _Labels(node, cameras)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        msg_type = CompressedImage if transport == 'compressed' else Image
        suffix = '/compressed' if transport == 'compressed' else ''
        pubs = {cam: node.create_publisher(msg_type, f'{cam}/image_rect_color{suffix}', qos)
                for cam in cameras}
        messages = {cam: _message(rgb, cam, transport)
                    for cam, rgb in zip(cameras, rig_frames(len(cameras), size))}
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and not (
                diag.get('state') == 'active'
                and all(p.get_subscription_count() for p in pubs.values())
                and all(s.get_publisher_count() for s in labels.subs)):
            time.sleep(0.1)
        if diag.get('state') != 'active':
            return {'error': f'segment_node not active after {ready_timeout_s:.0f} s '
                             f'(diagnostics: {diag.get("_message", "none")})'}
        sent = dict.fromkeys(cameras, 0)
        diag_start: Dict[str, str] = {}
        period = 1.0 / rate_hz
        # sync none: free-running cameras at staggered phases; exact: one stamp per tick.
        phases = [0.0] * len(cameras) if sync == 'exact' else \
            [i * period / len(cameras) for i in range(len(cameras))]
        start = time.monotonic()
        counting_from = start + warmup_s
        tick = 0
        while True:
            base = start + tick * period
            if base >= counting_from + seconds:
                break
            if not labels.counting and base >= counting_from:
                labels.counting = True
                sent = dict.fromkeys(cameras, 0)
                diag_start = dict(diag)  # counters at the start of the measured window
            stamp = None
            for cam, phase in zip(cameras, phases):
                time.sleep(max(0.0, base + phase - time.monotonic()))
                if stamp is None or sync != 'exact':
                    stamp = node.get_clock().now().to_msg()
                msg = messages[cam]
                msg.header.stamp = stamp
                pubs[cam].publish(msg)
                sent[cam] += 1
            tick += 1
        time.sleep(2.0 + 2 * period)  # the last batches come out; one more /diagnostics
        labels.counting = False

        def pct(window: LatencyWindow, q: float) -> Optional[float]:
            return window.percentile(q)

        return {
            'cameras': list(cameras), 'seconds': seconds, 'rate_hz': rate_hz,
            'transport': transport, 'sync': sync, 'size': list(size),
            'sent': sent, 'received': labels.received,
            'latency_p50_ms': pct(labels.latency, 50), 'latency_p95_ms': pct(labels.latency, 95),
            'camera_latency_p50_ms': {c: pct(w, 50) for c, w in labels.per_camera.items()},
            'diagnostics': dict(diag), 'diagnostics_start': diag_start,
        }
    finally:
        executor.shutdown()
        node.destroy_node()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='rig_player', description=__doc__.splitlines()[0])
    parser.add_argument('--cameras', default='front,rear,front_left,front_right,rear_left,'
                        'rear_right', help='comma-separated camera namespaces')
    parser.add_argument('--height', type=int, default=1080)
    parser.add_argument('--width', type=int, default=1920)
    parser.add_argument('--rate', type=float, default=10.0, help='Hz per camera')
    parser.add_argument('--seconds', type=float, default=15.0, help='measured seconds')
    parser.add_argument('--warmup', type=float, default=5.0, help='seconds before measuring')
    parser.add_argument('--transport', choices=('raw', 'compressed'), default='compressed')
    parser.add_argument('--sync', choices=('exact', 'none'), default='none')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the arguments (ROS arguments after ``--ros-args``), play, print one JSON line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if '--ros-args' in argv:
        ros_args = argv[argv.index('--ros-args'):]
        argv = argv[:argv.index('--ros-args')]
    args = build_parser().parse_args(argv)
    rclpy.init(args=['rig_player', *ros_args])
    try:
        result = play(args.cameras.split(','), (args.height, args.width), args.rate,
                      args.seconds, args.transport, args.sync, warmup_s=args.warmup)
    finally:
        rclpy.try_shutdown()
    print(json.dumps(result), flush=True)
    return 0 if 'error' not in result else 1


if __name__ == '__main__':
    sys.exit(main())
