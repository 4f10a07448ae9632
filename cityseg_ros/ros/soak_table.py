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

"""Soak: the node in its own process under a 30 Hz stereo stream and a cycle of faults.

``segment_node`` (ESPNetv2, random weights, semantic/points on) runs as ``python -m
cityseg_ros.ros.node``; this process streams stereo pairs and camera infos (reliable, like a
driver) and, for ``--duration-s``, walks a cycle of faults: parameter changes, a
deactivate/activate through the lifecycle services (as ``ros2 lifecycle set`` does), stamps
jumping forward and back, one pair stamped a day ahead, a bag-loop jump, a ``use_sim_time`` run
with ``/clock`` jumping back, bad messages and a frame_id change. After each fault it waits for
labels of a pair published after it. It prints the node's RSS and counters over time and one
row per fault; acceptance (issue 11): RSS growth < 50 MB after warm-up over 10 minutes, output
resumes after every fault, the node never leaves ``active`` unless told to.

``python -m cityseg_ros.ros.soak_table --duration-s 600`` or ``benchmark --tables soak``.
"""

import argparse
import array
from collections import OrderedDict
from dataclasses import dataclass, field
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from builtin_interfaces.msg import Time
from cityseg_ros.bench.timing import markdown_table
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
from rcl_interfaces.msg import Parameter as ParameterMsg, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

__all__ = ['run', 'soak', 'SoakResult', 'main']

NAMESPACE = '/cityseg_soak'
S = 1_000_000_000
#: Seconds to wait for output after a fault before calling it "not resumed".
RESUME_TIMEOUT_S = 15.0


@dataclass
class FaultResult:
    """One injected fault and whether output came back after it."""

    name: str
    at_s: float
    resumed: bool = False
    ms_to_output: Optional[float] = None
    pairs_until_output: Optional[int] = None


@dataclass
class SoakResult:
    """What a soak run measured."""

    duration_s: float
    rate_hz: float
    size: Tuple[int, int]
    samples: List[Dict[str, str]] = field(default_factory=list)
    faults: List[FaultResult] = field(default_factory=list)
    unexpected_states: List[str] = field(default_factory=list)
    clouds: int = 0
    published_pairs: int = 0
    error: Optional[str] = None
    node_log_tail: str = ''
    final: Dict[str, str] = field(default_factory=dict)

    @property
    def rss_growth_mb(self) -> Optional[float]:
        """RSS after the run minus RSS after warm-up (the first sample past 20 % of the run)."""
        rss = [(float(s['t s']), float(s['node RSS MB'])) for s in self.samples
               if s.get('node RSS MB') not in (None, 'n/a')]
        if len(rss) < 2:
            return None
        warm = next((v for t, v in rss if t >= 0.2 * self.duration_s), rss[0][1])
        return rss[-1][1] - warm

    @property
    def ok(self) -> bool:
        """Acceptance: every fault resumed, never left active untold, output flowed."""
        return (self.error is None and self.published_pairs > 0 and not self.unexpected_states
                and all(f.resumed for f in self.faults))


def _rss_mb(pid: int) -> Optional[float]:
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                step=rgb.shape[1] * 3)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, S)
    data = array.array('B')
    data.frombytes(np.ascontiguousarray(rgb))
    msg.data = data
    return msg


def _camera_info(cam: str, stamp_ns: int, size: Tuple[int, int]) -> CameraInfo:
    """Return the Cityscapes stereo camera scaled to ``size`` (height, width)."""
    height, width = size
    scale = width / 2048.0
    fx, fy, cx, cy = 2262.52 * scale, 2265.30 * scale, 1096.98 * scale, 513.14 * scale
    msg = CameraInfo(width=width, height=height, distortion_model='plumb_bob')
    msg.header.frame_id = f'{cam}_optical'
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, S)
    tx = -fx * 0.209313 if cam == 'right' else 0.0
    msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    msg.d = [0.0] * 5
    return msg


def _stereo_images(size: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Return a textured left image and its right view shifted by 8 px (a flat wall)."""
    height, width = size
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (height, width + 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(left[:, 8:]), np.ascontiguousarray(left[:, :width])


def _node_process(size: Tuple[int, int], input_size: Tuple[int, int], model: str,
                  device: str, log) -> subprocess.Popen:
    params = {'model': model, 'weights': "''", 'device': device,
              'input_height': input_size[0], 'input_width': input_size[1],
              'publish_overlay': 'false', 'publish_color': 'false',
              'stereo_disparity_range': 32, 'points_downscale': 1}
    cmd = [sys.executable, '-m', 'cityseg_ros.ros.node', '--ros-args', '-r',
           f'__ns:={NAMESPACE}']
    for name, value in params.items():
        cmd += ['-p', f'{name}:={value}']
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


class _Player:
    """Streams pairs at ``rate_hz`` with a controllable stamp source and records the outputs."""

    def __init__(self, node, size: Tuple[int, int], rate_hz: float) -> None:
        self.node = node
        self.size = size
        self.period = 1.0 / rate_hz
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.images = {c: node.create_publisher(Image, f'{c}/image_rect_color', qos)
                       for c in ('left', 'right')}
        self.infos = {c: node.create_publisher(CameraInfo, f'{c}/camera_info', qos)
                      for c in ('left', 'right')}
        self.clock = node.create_publisher(Clock, '/clock', 10)
        self.frames = _stereo_images(size)
        self.lock = threading.Lock()
        self.offset_ns = 0  # added to the wall clock
        self.sim_ns: Optional[int] = None  # when set: stamps and /clock follow this instead
        self.once_ns: Optional[int] = None  # one pair with this stamp, then normal again
        self.frame_suffix = ''
        self.seq = 0
        self.sent: 'OrderedDict[int, int]' = OrderedDict()  # stamp -> seq, bounded
        self.outputs: List[Tuple[int, float]] = []  # (seq, monotonic) of labels received
        self.clouds = 0
        self.diag: Dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._stream, name='soak-player', daemon=True)
        node.create_subscription(Image, 'left/semantic/labels', self._on_labels, qos)
        node.create_subscription(PointCloud2, 'semantic/points', self._on_cloud, qos)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _stamp(self) -> int:
        with self.lock:
            if self.once_ns is not None:
                stamp, self.once_ns = self.once_ns, None
                return stamp
            if self.sim_ns is not None:
                self.sim_ns += int(self.period * S)
                self.clock.publish(Clock(clock=Time(sec=self.sim_ns // S,
                                                    nanosec=self.sim_ns % S)))
                return self.sim_ns
            return time.time_ns() + self.offset_ns

    def _stream(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            stamp = self._stamp()
            with self.lock:
                self.seq += 1
                self.sent[stamp] = self.seq
                while len(self.sent) > 4096:
                    self.sent.popitem(last=False)
                suffix = self.frame_suffix
            for cam, rgb in zip(('left', 'right'), self.frames):
                self.infos[cam].publish(_camera_info(cam, stamp, self.size))
                self.images[cam].publish(_image(rgb, stamp, f'{cam}_optical{suffix}'))
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_t = time.monotonic()  # fell behind: no burst to catch up

    def _on_labels(self, msg: Image) -> None:
        stamp = msg.header.stamp.sec * S + msg.header.stamp.nanosec
        with self.lock:
            seq = self.sent.get(stamp)
            if seq is not None:
                self.outputs.append((seq, time.monotonic()))
                del self.outputs[:-1000]

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.clouds += 1

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f'{NAMESPACE}/segment_node'):
                self.diag = {kv.key: kv.value for kv in status.values}
                self.diag['_message'] = status.message

    def mark(self) -> int:
        """Return the sequence number the next pair will carry."""
        with self.lock:
            return self.seq + 1

    def wait_output(self, after_seq: int, timeout: float) -> Tuple[bool, Optional[float], int]:
        """Wait for labels of a pair numbered >= ``after_seq``; (ok, ms, pairs sent until)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            with self.lock:
                hit = next(((s, t) for s, t in self.outputs if s >= after_seq), None)
            if hit is not None:
                return True, (hit[1] - start) * 1e3, hit[0] - after_seq + 1
            time.sleep(0.02)
        return False, None, self.mark() - after_seq

    def publish_bad(self) -> None:
        """One of each hostile input the node must count and survive."""
        left, _ = self.frames
        now = time.time_ns() + self.offset_ns
        bad = []
        for encoding in ('16UC1', 'yuv999'):
            msg = _image(left, now, 'left_optical')
            msg.encoding = encoding
            bad.append(msg)
        msg = _image(left, now, 'left_optical')
        msg.data = msg.data[:100]
        bad.append(msg)
        bad.append(_image(np.zeros((8, 8, 3), np.uint8), now, 'left_optical'))
        msg = _image(left, now, 'left_optical')
        msg.header.stamp.nanosec = 1_500_000_000
        bad.append(msg)
        msg = _image(left, now, 'left_optical')
        msg.header.stamp.sec = -1
        bad.append(msg)
        bad.append(_image(left, 0, 'left_optical'))
        msg = _image(left, now, 'left_optical')
        msg.width = msg.height = msg.step = 2**32 - 1
        bad.append(msg)
        for msg in bad:  # paced: a burst would only overflow the node's input queue
            self.images['left'].publish(msg)
            time.sleep(0.03)
        info = _camera_info('left', now, self.size)
        info.p[0] = float('nan')
        self.infos['left'].publish(info)
        info = _camera_info('right', now, self.size)
        info.width = 2**32 - 1
        time.sleep(0.03)
        self.infos['right'].publish(info)


class _Control:
    """Lifecycle and parameter service clients of the node, as the ros2 CLI uses them."""

    def __init__(self, node) -> None:
        base = f'{NAMESPACE}/segment_node'
        self.change = node.create_client(ChangeState, f'{base}/change_state')
        self.get = node.create_client(GetState, f'{base}/get_state')
        self.params = node.create_client(SetParameters, f'{base}/set_parameters')

    @staticmethod
    def _call(client, request, timeout: float = 10.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f'service {client.srv_name} not available')
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not future.done():
            raise RuntimeError(f'service {client.srv_name} did not answer in {timeout} s')
        return future.result()

    def state(self) -> str:
        return self._call(self.get, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self._call(self.change, request).success

    def set_params(self, **values) -> bool:
        request = SetParameters.Request()
        for name, value in values.items():
            if isinstance(value, bool):
                pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
            elif isinstance(value, int):
                pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
            else:
                pv = ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                    double_value=float(value))
            request.parameters.append(ParameterMsg(name=name, value=pv))
        return all(r.successful for r in self._call(self.params, request).results)


def _faults(player: _Player, control: _Control) -> List[Tuple[str, Callable[[], None]]]:
    """Return the fault cycle: (name, action) in the order they are injected."""
    def shift(delta_ns: int) -> Callable[[], None]:
        def action() -> None:
            with player.lock:
                player.offset_ns += delta_ns
        return action

    def once_future() -> None:
        with player.lock:
            player.once_ns = time.time_ns() + player.offset_ns + 86400 * S

    def sim_on() -> None:
        with player.lock:
            player.sim_ns = time.time_ns() + player.offset_ns
        assert control.set_params(use_sim_time=True)

    def sim_back() -> None:
        with player.lock:
            player.sim_ns -= 30 * S

    def sim_off() -> None:
        assert control.set_params(use_sim_time=False)
        with player.lock:
            player.sim_ns = None

    def lifecycle() -> None:
        assert control.transition(Transition.TRANSITION_DEACTIVATE)
        assert control.state() == 'inactive'
        assert control.transition(Transition.TRANSITION_ACTIVATE)

    def params(**values) -> Callable[[], None]:
        def action() -> None:
            assert control.set_params(**values), f'parameters {values} rejected'
        return action

    def frame_id() -> None:
        with player.lock:
            player.frame_suffix = '' if player.frame_suffix else '_renamed'

    return [
        ('parameters: overlay_alpha, points_decimation, stereo_block_size, max_rate_hz',
         params(overlay_alpha=0.3, points_decimation=2, stereo_block_size=7, max_rate_hz=20.0)),
        ('lifecycle: deactivate, activate', lifecycle),
        ('stamps jump forward 1 h', shift(3600 * S)),
        ('stamps jump back 1 h', shift(-3600 * S)),
        ('one pair stamped a day ahead', once_future),
        ('bag loop: stamps jump back 10 s', shift(-10 * S)),
        ('use_sim_time on, /clock follows the stamps', sim_on),
        ('/clock and stamps jump back 30 s', sim_back),
        ('use_sim_time off', sim_off),
        ('bad messages (encodings, truncated, 8x8, bad stamps, NaN/huge camera_info)',
         player.publish_bad),
        ('frame_id change', frame_id),
        ('parameters back', params(overlay_alpha=0.5, points_decimation=4, stereo_block_size=5,
                                   max_rate_hz=0.0)),
        ('stamps back on the wall clock (forward 10 s)', shift(10 * S)),
    ]


def soak(duration_s: float = 600.0, rate_hz: float = 30.0, size: Tuple[int, int] = (256, 512),
         input_size: Tuple[int, int] = (128, 256), model: str = 'espnetv2',
         device: str = 'cpu', settle_s: float = 2.0) -> SoakResult:
    """Run the soak and return what it measured (see the module docstring)."""
    result = SoakResult(duration_s=duration_s, rate_hz=rate_hz, size=size)
    log = tempfile.NamedTemporaryFile('w+', prefix='cityseg_soak_', suffix='.log', delete=False)
    proc = _node_process(size, input_size, model, device, log)
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('cityseg_soak_player', namespace=NAMESPACE, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    player = _Player(node, size, rate_hz)
    control = _Control(node)
    try:
        deadline = time.monotonic() + 180.0
        while player.diag.get('state') != 'active':
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('segment_node did not become active (see its log)')
            time.sleep(0.2)
        player.start()
        ok, _, _ = player.wait_output(player.mark(), 60.0)
        if not ok:
            raise RuntimeError('no labels from segment_node within 60 s of streaming')
        start = time.monotonic()
        every = max(1.0, duration_s / 20.0)
        next_sample = start
        faults = _faults(player, control)
        index = 0
        told_inactive = threading.Event()

        def sample() -> None:
            diag = player.diag
            state = control.state()
            if state != 'active' and not told_inactive.is_set():
                result.unexpected_states.append(f'{state} at {time.monotonic() - start:.1f} s')
            rss = _rss_mb(proc.pid)
            result.samples.append({
                't s': f'{time.monotonic() - start:.0f}',
                'node RSS MB': 'n/a' if rss is None else f'{rss:.1f}',
                'published pairs': diag.get('published_pairs', '?'),
                'output Hz': diag.get('output_hz', '?'),
                'dropped': diag.get('dropped_pairs', '?'),
                'rejected': diag.get('rejected_messages', '?'),
                'failed': diag.get('failed_pairs', '?'),
                'points published / failed': f'{diag.get("points_published", "?")} / '
                                             f'{diag.get("points_failed", "?")}',
                'time jumps (stamps / clock)': f'{diag.get("time_jumps_back", "?")}+'
                                               f'{diag.get("time_jumps_forward", "?")} / '
                                               f'{diag.get("clock_jumps", "?")}',
                'state': state,
            })

        sample()
        while time.monotonic() - start < duration_s:
            name, action = faults[index % len(faults)]
            index += 1
            if name.startswith('lifecycle'):
                told_inactive.set()
            at = time.monotonic() - start
            action()
            told_inactive.clear()
            ok, ms, pairs = player.wait_output(player.mark(), RESUME_TIMEOUT_S)
            result.faults.append(FaultResult(name, at, ok, ms, pairs))
            end_settle = time.monotonic() + settle_s
            while time.monotonic() < end_settle:
                if time.monotonic() >= next_sample:
                    sample()
                    next_sample += every
                time.sleep(0.05)
            if proc.poll() is not None:
                raise RuntimeError(f'segment_node exited with {proc.returncode}')
        time.sleep(1.5)  # one more diagnostics message
        sample()
        result.published_pairs = int(player.diag.get('published_pairs', '0'))
        result.final = dict(player.diag)
        result.clouds = player.clouds
    except (RuntimeError, AssertionError) as exc:
        result.error = str(exc) or type(exc).__name__
    finally:
        player.stop()
        executor.shutdown(timeout_sec=10.0)
        spinner.join(10.0)  # no callback may run while the node's handles go
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.flush()
        log.seek(0)
        result.node_log_tail = ''.join(log.readlines()[-30:])
        log.close()
        os.unlink(log.name)
    return result


def format_result(result: SoakResult, model: str = 'espnetv2') -> str:
    """Markdown: the run, RSS and counters over time, one row per fault, the verdict."""
    height, width = result.size
    lines = [f'{result.duration_s:.0f} s at {result.rate_hz:g} Hz: {width}x{height} stereo pairs '
             f'+ camera_info into {model} (random weights) with semantic/points; '
             f'{len(result.faults)} faults injected.', '']
    if result.error:
        lines += [f'ERROR: {result.error}', '', '```', result.node_log_tail.rstrip(), '```', '']
    if result.samples:
        header = list(result.samples[0])
        lines.append(markdown_table(header, [[s[k] for k in header] for s in result.samples]))
    if result.faults:
        rows = [[f.name, f'{f.at_s:.1f}', 'yes' if f.resumed else 'NO',
                 'n/a' if f.ms_to_output is None else f'{f.ms_to_output:.0f}',
                 str(f.pairs_until_output)] for f in result.faults]
        lines.append(markdown_table(['fault', 'at s', 'output resumed', 'ms to output',
                                     'pairs sent until output'], rows))
    if result.final:
        keys = ('_message', 'rejected_bad_image', 'rejected_too_small', 'rejected_bad_stamp',
                'rejected_too_large', 'rejected_camera_info', 'rejected_bad_format',
                'unpaired_images', 'lost_images', 'frame_id_changes', 'last_time_jump',
                'last_rejected', 'latency_p50_ms', 'inference_p50_ms', 'internal_errors')
        lines.append('final /diagnostics: ' + '; '.join(
            f'{k.strip("_")}: {result.final.get(k, "?")}' for k in keys))
        lines.append('')
    growth = result.rss_growth_mb
    resumed = sum(f.resumed for f in result.faults)
    lines.append(
        f'RSS growth after warm-up: {"n/a" if growth is None else f"{growth:+.1f} MB"}; '
        f'output resumed after {resumed}/{len(result.faults)} faults; left active unless '
        f'told: {"; ".join(result.unexpected_states) or "never"}; semantic/points clouds '
        f'received: {result.clouds}; verdict: {"PASS" if result.ok else "FAIL"}')
    return '\n'.join(lines)


def run(runs: int = 5, duration_s: float = 600.0, model: str = 'espnetv2',
        device: str = 'cpu') -> str:
    """Benchmark entry (``benchmark --tables soak --duration-s S``); ``runs`` is unused."""
    if device == 'auto':
        device = 'cpu'  # the soak measures the node, not the model; CUDA works too
    result = soak(duration_s=duration_s, model=model, device=device,
                  settle_s=_settle_s(duration_s))
    return format_result(result, model)


def _settle_s(duration_s: float) -> float:
    """Steady streaming after each fault: 2 s, shorter in short runs so the cycle completes."""
    return min(2.0, max(0.3, duration_s / 60.0))


def _size(text: str) -> Tuple[int, int]:
    height, width = (int(v) for v in text.lower().split('x'))
    return height, width


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the soak table; exit 0 when the acceptance holds, 1 when it does not."""
    parser = argparse.ArgumentParser(prog='soak_table', description=__doc__.splitlines()[0])
    parser.add_argument('--duration-s', type=float, default=600.0)
    parser.add_argument('--rate-hz', type=float, default=30.0)
    parser.add_argument('--size', type=_size, default=(256, 512), metavar='HxW')
    parser.add_argument('--input-size', type=_size, default=(128, 256), metavar='HxW',
                        help='network input size')
    parser.add_argument('--model', default='espnetv2')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    result = soak(args.duration_s, args.rate_hz, args.size, args.input_size, args.model,
                  args.device, settle_s=_settle_s(args.duration_s))
    print(format_result(result, args.model), flush=True)
    growth = result.rss_growth_mb
    big = growth is not None and args.duration_s >= 300 and growth >= 50.0
    return 0 if result.ok and not big else 1


if __name__ == '__main__':
    sys.exit(main())
