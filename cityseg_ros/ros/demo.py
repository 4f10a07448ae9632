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

"""The main job: replay stereo frames through the live node and measure it.

Frames come from a rosbag2 (``--bag``, e.g. written by ``make_bag``), else from the real stereo
pair(s) in ``../shared/data/cityscapes``, else from a generated stereo sequence. A player node
publishes them (reliable QoS) at ``--rate``; :class:`~cityseg_ros.ros.node.SegmentNode` segments
them through real DDS; a recorder subscribes to every output, writes the first frames as PNGs
and the run ends with a latency / throughput table.
"""

import argparse
from itertools import cycle, islice
import logging
from pathlib import Path
import sys
import threading
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from cityseg_ros.bench.timing import markdown_table
from cityseg_ros.checkpoints import cache_dir
from cityseg_ros.errors import CitysegError
from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.models.zoo import get_spec
from cityseg_ros.ros.messages import rgb_msg
from cityseg_ros.ros.node import SegmentNode
from cityseg_ros.tools.segment_images import parse_size
from cityseg_ros.worker import LatencyWindow
import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

logger = logging.getLogger('demo')

SHARED = Path(__file__).resolve().parents[3] / 'shared'
OUTPUTS = ('labels', 'color', 'overlay')
StereoFrame = Tuple[np.ndarray, np.ndarray]


def find_weights() -> str:
    """Return the ESPNetv2 weights: ../shared, else the cache, else '' (random, warned)."""
    name = get_spec('espnetv2').weights[0].filename
    for path in (SHARED / 'data' / 'weights' / 'espnetv2' / name, cache_dir() / name):
        if path.is_file():
            return str(path)
    logger.warning('!!! no ESPNetv2 weights found: the node runs UNTRAINED weights and its '
                   'labels are meaningless. `fetch_weights --model espnetv2` fixes that. !!!')
    return ''


def synthetic_stereo(count: int, size: Tuple[int, int] = (512, 1024)) -> List[StereoFrame]:
    """Generate a moving stereo sequence: textured ground and boxes with a disparity shift."""
    h, w = size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 60, (h, w + 64, 3), dtype=np.uint8)
    frames = []
    for i in range(count):
        scene = texture.copy()
        scene[h // 2:] += np.uint8(90)
        left_x = 100 + 8 * i
        scene[h // 3:2 * h // 3, left_x:left_x + w // 6] = (200, 40, 40)
        left = np.ascontiguousarray(scene[:, 32:32 + w])
        right = np.ascontiguousarray(scene[:, 16:16 + w])  # 16 px disparity everywhere
        frames.append((left, right))
    return frames


def shared_stereo() -> List[StereoFrame]:
    """Load the real rectified stereo pair(s) under ../shared/data/cityscapes/*Img8bit/val."""
    frames = []
    root = SHARED / 'data' / 'cityscapes'
    for left in sorted((root / 'leftImg8bit' / 'val').rglob('*_leftImg8bit.png')):
        right = Path(str(left).replace('leftImg8bit', 'rightImg8bit'))
        if right.is_file():
            frames.append((read_rgb(left), read_rgb(right)))
    return frames


def bag_stereo(path: Path, limit: int) -> List[StereoFrame]:
    """Read up to ``limit`` stereo frames of a make_bag-layout bag."""
    from cityseg_ros.bags import BagReader, TOPIC_LEFT_IMAGE, TOPIC_RIGHT_IMAGE
    with BagReader(path) as reader:
        right = TOPIC_RIGHT_IMAGE if TOPIC_RIGHT_IMAGE in reader.topics else None
        frames = []
        for frame in islice(reader.read_frames(TOPIC_LEFT_IMAGE, right_topic=right), limit):
            frames.append((frame.left, frame.right if frame.right is not None else frame.left))
    return frames


class Recorder:
    """Subscribe to every output of the node, time them, and keep the first frames."""

    def __init__(self, node, cameras: Sequence[str], out: Path, keep: int) -> None:
        self.out, self.keep = out, keep
        self.latency = LatencyWindow(10000)
        self.received: dict = {}
        self._saved: dict = {}
        self._lock = threading.Lock()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [node.create_subscription(Image, f'{cam}/semantic/{kind}',
                                               self._callback(node, cam, kind), qos)
                      for cam in cameras for kind in OUTPUTS]

    def _callback(self, node, cam: str, kind: str):
        def on_msg(msg: Image) -> None:
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            now = node.get_clock().now().nanoseconds
            with self._lock:
                self.received[(cam, kind)] = self.received.get((cam, kind), 0) + 1
                if kind == 'labels':
                    self.latency.add((now - stamp) / 1e6)
                index = self._saved.setdefault((cam, kind), 0)
                self._saved[(cam, kind)] += 1
            if index < self.keep:
                shape = (msg.height, msg.width, 3) if msg.encoding == 'rgb8' else \
                    (msg.height, msg.width)
                image = np.frombuffer(bytes(msg.data), np.uint8).reshape(shape)
                write_png(self.out / f'{index:04d}_{cam}_{kind}.png', image)
        return on_msg


def publish_frames(player, frames: Iterator[StereoFrame], count: int, rate: float,
                   cameras: Sequence[str]) -> float:
    """Publish ``count`` stereo pairs at ``rate`` Hz with fresh stamps; return the seconds."""
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    pubs = {cam: player.create_publisher(Image, f'{cam}/image_rect_color', qos)
            for cam in cameras}
    _wait_for_subscribers(pubs.values())
    start = time.monotonic()
    for i, (left, right) in enumerate(islice(frames, count)):
        header = Header(stamp=player.get_clock().now().to_msg(),
                        frame_id='stereo_left_optical_frame')
        for cam, image in (('left', left), ('right', right)):
            if cam in pubs:
                if cam == 'right':
                    header = Header(stamp=header.stamp, frame_id='stereo_right_optical_frame')
                pubs[cam].publish(rgb_msg(image, header))
        next_time = start + (i + 1) / rate
        time.sleep(max(0.0, next_time - time.monotonic()))
    return time.monotonic() - start


def _wait_for_subscribers(pubs, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='demo', description=__doc__.splitlines()[0])
    parser.add_argument('--bag', type=Path, help='a make_bag-layout rosbag2 to replay')
    parser.add_argument('--model', default='espnetv2')
    parser.add_argument('--weights', default=None,
                        help="checkpoint (default: ESPNetv2's from ../shared or the cache)")
    parser.add_argument('--device', default='auto')
    parser.add_argument('--input-size', type=parse_size, default=(0, 0), metavar='HxW',
                        help="network input size (default: the model's test size)")
    parser.add_argument('--frames', type=int, default=20, help='stereo pairs to publish')
    parser.add_argument('--rate', type=float, default=5.0, help='publish rate, Hz')
    parser.add_argument('--save', type=int, default=3, help='frames written as PNG per output')
    parser.add_argument('--left-only', action='store_true', help='segment the left camera only')
    parser.add_argument('--out', type=Path, default=Path('out/demo'))
    return parser


def run(args: argparse.Namespace) -> int:
    """Replay, segment, record, report; return the exit code."""
    if args.bag:
        frames, source = bag_stereo(args.bag, args.frames), str(args.bag)
    else:
        frames, source = shared_stereo(), 'the Cityscapes stereo pair in ../shared'
        if not frames:
            frames, source = synthetic_stereo(min(args.frames, 10)), 'a generated stereo sequence'
    if not frames:
        raise CitysegError(f'no stereo frames found in {source}')
    weights = find_weights() if args.weights is None else args.weights
    cameras = ['left'] if args.left_only else ['left', 'right']
    args.out.mkdir(parents=True, exist_ok=True)
    print(f'replaying {args.frames} stereo pairs from {source} at {args.rate:g} Hz '
          f'through segment_node ({args.model}, weights: {weights or "RANDOM"})', flush=True)

    rclpy.init()
    executor = MultiThreadedExecutor()
    node = SegmentNode(namespace='stereo', parameter_overrides=[
        Parameter('model', value=args.model), Parameter('weights', value=weights),
        Parameter('device', value=args.device), Parameter('cameras', value=cameras),
        Parameter('input_reliability', value='reliable'),
        Parameter('input_height', value=args.input_size[0]),
        Parameter('input_width', value=args.input_size[1]),
    ])
    player = rclpy.create_node('cityseg_demo', namespace='stereo')
    try:
        ok = TransitionCallbackReturn.SUCCESS
        if node.trigger_configure() != ok or node.trigger_activate() != ok:
            raise CitysegError(f'segment_node failed to start: {node.diagnostics().message}')
        recorder = Recorder(player, cameras, args.out, args.save)
        executor.add_node(node)
        executor.add_node(player)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        seconds = publish_frames(player, cycle(frames), args.frames, args.rate, cameras)
        _drain(node)
        _report(node, recorder, args, seconds)
    finally:
        executor.shutdown()
        node.destroy_node()
        player.destroy_node()
        rclpy.try_shutdown()
    print(f'outputs of the first {args.save} frames written to {args.out}/')
    return 0


def _drain(node, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (node.worker.stats.pending or node.worker.stats.busy):
        time.sleep(0.05)
    time.sleep(0.3)  # the last messages in flight


def _report(node, recorder: Recorder, args: argparse.Namespace, seconds: float) -> None:
    stats = node.worker.stats
    lat = recorder.latency
    rows = [
        ['pairs published', args.frames],
        ['pairs segmented', stats.processed],
        ['pairs dropped (newest wins)', stats.dropped],
        ['throughput, pairs/s', f'{stats.processed / max(seconds, 1e-9):.2f}'],
        ['inference ms (p50 / p95)',
         f'{_ms(stats.inference_p50_ms)} / {_ms(stats.inference_p95_ms)}'],
        ['stamp -> labels received ms (p50 / p95)',
         f'{_ms(lat.percentile(50))} / {_ms(lat.percentile(95))}'],
        ['messages received', sum(recorder.received.values())],
    ]
    print(markdown_table(['', 'value'], rows))


def _ms(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    try:
        return run(args)
    except CitysegError as exc:
        print(f'demo: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
