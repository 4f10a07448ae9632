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

"""The main job: replay stereo frames through the live node, as a user runs it, and measure it.

Frames come from a rosbag2 (``--bag``, e.g. written by ``make_bag``), else from the real stereo
pair(s) in ``../shared/data/cityscapes``, else from a generated stereo sequence (``--synthetic
HxW`` forces it). ``segment_node`` runs in its own process with the package's
``config/segment.yaml`` and only the options given here on top (so the node's defaults, its
input QoS included, are the ones a user gets); ``--node none`` uses a node that is already
running, e.g. from ``ros2 launch cityseg_ros segment.launch.py``. A player publishes the pairs
like a camera driver (identical left/right stamps; reliable by default, ``--player-reliability
best_effort`` as sensor-data drivers do) at ``--rate``; a recorder subscribes to every output,
writes the first frames as PNGs, and the run ends with a latency / throughput table. No output
at all is an error (exit 2), so a default that does not work cannot pass unnoticed.
"""

import argparse
from itertools import cycle, islice
import logging
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from cityseg_ros.bench.timing import markdown_table
from cityseg_ros.checkpoints import cache_dir
from cityseg_ros.errors import CitysegError
from cityseg_ros.imageio import read_rgb, write_png
from cityseg_ros.models.zoo import get_spec
from cityseg_ros.ros.messages import rgb_msg
from cityseg_ros.tools.common import run_cli
from cityseg_ros.tools.segment_images import parse_size
from cityseg_ros.worker import LatencyWindow
from diagnostic_msgs.msg import DiagnosticArray
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
import yaml

logger = logging.getLogger('demo')

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / 'shared'
OUTPUTS = ('labels', 'color', 'overlay')
RELIABILITY = {'reliable': ReliabilityPolicy.RELIABLE,
               'best_effort': ReliabilityPolicy.BEST_EFFORT}
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
        self.last_received: Optional[float] = None  # time.monotonic() of the last labels
        self._first = cameras[0]
        self._saved: dict = {}
        self._lock = threading.Lock()
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = {(cam, kind): node.create_subscription(
            Image, f'{cam}/semantic/{kind}', self._callback(node, cam, kind), qos)
            for cam in cameras for kind in OUTPUTS}

    @property
    def segmented(self) -> int:
        """Pairs whose labels arrived (counted on the first camera)."""
        return self.received.get((self._first, 'labels'), 0)

    def labels_matched(self) -> bool:
        """Whether every labels subscription has found the node's publisher."""
        return all(sub.get_publisher_count() for (cam, kind), sub in self._subs.items()
                   if kind == 'labels')

    def _callback(self, node, cam: str, kind: str):
        def on_msg(msg: Image) -> None:
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            now = node.get_clock().now().nanoseconds
            with self._lock:
                self.received[(cam, kind)] = self.received.get((cam, kind), 0) + 1
                if kind == 'labels':
                    self.latency.add((now - stamp) / 1e6)
                    self.last_received = time.monotonic()
                index = self._saved.setdefault((cam, kind), 0)
                self._saved[(cam, kind)] += 1
            if index < self.keep:
                shape = (msg.height, msg.width, 3) if msg.encoding == 'rgb8' else \
                    (msg.height, msg.width)
                image = np.frombuffer(bytes(msg.data), np.uint8).reshape(shape)
                write_png(self.out / f'{index:04d}_{cam}_{kind}.png', image)
        return on_msg


def publish_frames(player, frames: Iterator[StereoFrame], count: int, rate: float,
                   cameras: Sequence[str], reliability: str = 'reliable') -> float:
    """Publish ``count`` stereo pairs at ``rate`` Hz with fresh stamps; return the seconds.

    Left and right of a pair carry the same stamp, as a stereo driver's do.
    """
    pubs = make_publishers(player, cameras, reliability)
    _wait_for_subscribers(pubs.values())
    start = time.monotonic()
    for i, (left, right) in enumerate(islice(frames, count)):
        stamp = player.get_clock().now().to_msg()
        for cam, image in (('left', left), ('right', right)):
            if cam in pubs:
                header = Header(stamp=stamp, frame_id=f'stereo_{cam}_optical_frame')
                pubs[cam].publish(rgb_msg(image, header))
        next_time = start + (i + 1) / rate
        time.sleep(max(0.0, next_time - time.monotonic()))
    return time.monotonic() - start


def make_publishers(player, cameras: Sequence[str], reliability: str = 'reliable') -> dict:
    """Create (or reuse) the image publishers: keep last 5, ``reliability`` as a driver's."""
    qos = QoSProfile(depth=5, reliability=RELIABILITY[reliability])
    cache = player.__dict__.setdefault('_demo_publishers', {})
    for cam in cameras:
        if (cam, reliability) not in cache:
            cache[(cam, reliability)] = player.create_publisher(
                Image, f'{cam}/image_rect_color', qos)
    return {cam: cache[(cam, reliability)] for cam in cameras}


def _wait_for_subscribers(pubs, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
        time.sleep(0.05)


class Diagnostics:
    """Keep the latest ``/diagnostics`` values of the node in ``namespace``."""

    def __init__(self, node, namespace: str) -> None:
        self.values: Dict[str, str] = {}
        self.message = ''
        prefix = f'/{namespace}/segment_node'.replace('//', '/')

        def on_diag(msg: DiagnosticArray) -> None:
            for status in msg.status:
                if status.name.startswith(prefix):
                    self.values = {kv.key: kv.value for kv in status.values}
                    self.message = status.message
        self._sub = node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)


def package_params_file() -> Path:
    """Return the package's config/segment.yaml: the installed share copy, else the checkout's."""
    try:
        from ament_index_python.packages import get_package_share_directory
        path = Path(get_package_share_directory('cityseg_ros'), 'config', 'segment.yaml')
        if path.is_file():
            return path
    except (ImportError, LookupError, ValueError):  # not in the ament index
        pass
    return REPO / 'config' / 'segment.yaml'


def node_overrides(args: argparse.Namespace, weights: str) -> dict:
    """Parameters the demo sets on top of config/segment.yaml: only what was asked for."""
    overrides = {'weights': weights}
    if args.model is not None:
        overrides['model'] = args.model
    if args.device is not None:
        overrides['device'] = args.device
    if args.left_only:
        overrides['cameras'] = ['left']
    if args.input_size is not None:
        overrides['input_height'], overrides['input_width'] = args.input_size
    return overrides


def node_command(namespace: str, overrides_file: Path) -> List[str]:
    """Return the segment_node command: the package's params file, then the demo's overrides."""
    return [sys.executable, '-m', 'cityseg_ros.ros.node', '--ros-args',
            '-r', f'__ns:=/{namespace}', '--params-file', str(package_params_file()),
            '--params-file', str(overrides_file)]


# Runs argv[2:] after asking Linux for a SIGINT when the parent (pid argv[1]) dies, so a demo
# killed by SIGTERM/SIGKILL leaves no node behind (scripts/ament_register.sh does the same).
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
except AttributeError:  # not Linux
    pass
if os.getppid() == int(sys.argv[1]):
    os.execv(sys.argv[2], sys.argv[2:])
"""


def start_node(namespace: str, overrides: dict, tmp: Path) -> subprocess.Popen:
    """Start segment_node in its own process (its log goes to this terminal)."""
    path = tmp / 'demo_overrides.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': overrides}}))
    cmd = node_command(namespace, path)
    print('segment_node: ' + ' '.join(cmd[1:]), flush=True)
    return subprocess.Popen([sys.executable, '-S', '-c', _DIE_WITH_PARENT, str(os.getpid()),
                             *cmd])


def stop_node(proc: Optional[subprocess.Popen], timeout: float = 15.0) -> None:
    """Ctrl-C the node process as a terminal would; kill it if it does not stop."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until_ready(pubs, recorder: 'Recorder', proc: Optional[subprocess.Popen],
                     timeout: float) -> None:
    """Wait until the node subscribes to every input and publishes labels to the recorder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise CitysegError(f'segment_node exited with code {proc.returncode} before it '
                               'subscribed; its log above says why')
        if all(p.get_subscription_count() for p in pubs) and recorder.labels_matched():
            return
        time.sleep(0.1)
    seen = ', '.join(f'{p.topic_name}: {p.get_subscription_count()} subscriber(s)' for p in pubs)
    raise CitysegError(f'segment_node did not subscribe to the images within {timeout:g} s '
                       f'({seen}; labels publisher found: {recorder.labels_matched()}); is it '
                       'running and active in this namespace and ROS_DOMAIN_ID?')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='demo', description=__doc__.splitlines()[0])
    parser.add_argument('--bag', type=Path, help='a make_bag-layout rosbag2 to replay')
    parser.add_argument('--synthetic', type=parse_size, metavar='HxW',
                        help='replay a generated stereo sequence of this size instead')
    parser.add_argument('--model', help="zoo model (default: the params file's)")
    parser.add_argument('--weights', default=None,
                        help="checkpoint (default: ESPNetv2's from ../shared or the cache)")
    parser.add_argument('--device', help="'auto', 'cpu', 'cuda' (default: the params file's)")
    parser.add_argument('--input-size', type=parse_size, metavar='HxW',
                        help="network input size (default: the model's test size)")
    parser.add_argument('--frames', type=int, default=20, help='stereo pairs to publish')
    parser.add_argument('--rate', type=float, default=5.0, help='publish rate, Hz')
    parser.add_argument('--player-reliability', choices=sorted(RELIABILITY),
                        default='reliable', help='QoS of the image publishers (default: '
                        'reliable, as image_transport publishers are)')
    parser.add_argument('--node', choices=('process', 'none'), default='process',
                        help="'process': start segment_node with config/segment.yaml; 'none': "
                        'use one already running (ros2 launch)')
    parser.add_argument('--namespace', default='stereo', help='namespace of the node')
    parser.add_argument('--timeout', type=float, default=180.0,
                        help='seconds to wait for the node to come up')
    parser.add_argument('--save', type=int, default=3, help='frames written as PNG per output')
    parser.add_argument('--left-only', action='store_true', help='segment the left camera only')
    parser.add_argument('--out', type=Path, default=Path('out/demo'))
    return parser


def _frames(args: argparse.Namespace) -> Tuple[List[StereoFrame], str]:
    if args.synthetic:
        h, w = args.synthetic
        return synthetic_stereo(min(args.frames, 10), (h, w)), f'a generated {w}x{h} sequence'
    if args.bag:
        return bag_stereo(args.bag, args.frames), str(args.bag)
    frames = shared_stereo()
    if frames:
        return frames, 'the Cityscapes stereo pair in ../shared'
    return synthetic_stereo(min(args.frames, 10)), 'a generated stereo sequence'


def run(args: argparse.Namespace) -> int:
    """Replay, segment, record, report; return the exit code."""
    frames, source = _frames(args)
    if not frames:
        raise CitysegError(f'no stereo frames found in {source}')
    weights = find_weights() if args.weights is None else args.weights
    cameras = ['left'] if args.left_only else ['left', 'right']
    args.out.mkdir(parents=True, exist_ok=True)
    print(f'replaying {args.frames} stereo pairs from {source} at {args.rate:g} Hz '
          f'({args.player_reliability} publishers) through segment_node', flush=True)

    proc = None
    # A context of its own: run() works beside (or after) any other rclpy user in the process.
    context = rclpy.Context()
    rclpy.init(context=context)
    player = rclpy.create_node('cityseg_demo', namespace=args.namespace, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.node == 'process':
                proc = start_node(args.namespace, node_overrides(args, weights), Path(tmp))
            recorder = Recorder(player, cameras, args.out, args.save)
            diagnostics = Diagnostics(player, args.namespace)
            pubs = make_publishers(player, cameras, args.player_reliability)
            wait_until_ready(pubs.values(), recorder, proc, args.timeout)
            start = time.monotonic()
            publish_frames(player, cycle(frames), args.frames, args.rate, cameras,
                           args.player_reliability)
            _drain(recorder, args.frames)
            seconds = (recorder.last_received or time.monotonic()) - start
            time.sleep(1.2)  # one more /diagnostics message with the final counters
            _report(recorder, diagnostics, args, seconds)
    finally:
        stop_node(proc)
        executor.shutdown()
        player.destroy_node()
        context.try_shutdown()
    if not recorder.segmented:
        raise CitysegError(
            f'segment_node published no labels for {args.frames} pairs '
            f'({args.player_reliability} publishers); its /diagnostics said: '
            f'{diagnostics.message or "nothing"}')
    print(f'outputs of the first {args.save} frames written to {args.out}/')
    return 0


def _drain(recorder: 'Recorder', expected: int, quiet: float = 3.0,
           timeout: float = 60.0) -> None:
    """Wait for the labels still in flight: all pairs, or ``quiet`` seconds without one."""
    deadline = time.monotonic() + timeout
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline and recorder.segmented < expected:
        count = recorder.segmented
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # the other outputs of the last pair


def _report(recorder: 'Recorder', diagnostics: Diagnostics, args: argparse.Namespace,
            seconds: float) -> None:
    diag = diagnostics.values
    lat = recorder.latency
    rows = [
        ['pairs published', args.frames],
        ['pairs segmented (labels received)', recorder.segmented],
        ['pairs dropped by the node (newest wins)', diag.get('dropped_pairs', '-')],
        ['throughput, pairs/s', f'{recorder.segmented / max(seconds, 1e-9):.2f}'],
        ['inference ms (p50 / p95)',
         f'{diag.get("inference_p50_ms", "-")} / {diag.get("inference_p95_ms", "-")}'],
        ['stamp -> labels received ms (p50 / p95)',
         f'{_ms(lat.percentile(50))} / {_ms(lat.percentile(95))}'],
        ['messages received', sum(recorder.received.values())],
        ['node state, device', f'{diag.get("state", "-")}, {diag.get("device", "-")}'],
    ]
    print(markdown_table(['', 'value'], rows), flush=True)


def _ms(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point."""
    return run_cli(build_parser, run, argv)


if __name__ == '__main__':
    sys.exit(main())
