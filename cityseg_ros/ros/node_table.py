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

"""Table: end-to-end latency through real DDS next to the forward time (node overhead).

``segment_node`` runs in its own process; this process publishes 2048x1024 stereo pairs
(reliable) slower than the node can segment them, so nothing is dropped, and subscribes to the
labels. Node overhead = stamp -> labels received minus the model's time inside the node
(``inference_p50_ms`` from ``/diagnostics``), i.e. decode + pairing + hand-off + render +
message building + DDS transport both ways.
"""

import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, Optional

from cityseg_ros.bench.timing import markdown_table, time_call
from cityseg_ros.engine import Segmenter
from cityseg_ros.ros.demo import publish_frames, Recorder, synthetic_stereo
from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.executors import SingleThreadedExecutor

NODE_NAMESPACE = 'cityseg_bench'


def _node_process(model: str, device: str, backend: str = 'torch') -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault('FASTDDS_BUILTIN_TRANSPORTS', 'LARGE_DATA')
    cmd = [sys.executable, '-m', 'cityseg_ros.ros.node', '--ros-args',
           '-r', f'__ns:=/{NODE_NAMESPACE}', '-p', f'model:={model}', '-p', "weights:=''",
           '-p', f'device:={device}', '-p', f'backend:={backend}',
           '-p', 'publish_color:=false', '-p', 'publish_overlay:=false']
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _diagnostics_listener(node) -> Dict[str, str]:
    latest: Dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if NODE_NAMESPACE in status.name:
                latest.update({kv.key: kv.value for kv in status.values})
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 10)
    return latest


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def run(runs: int = 5, model: str = 'espnetv2', device: str = 'auto',
        size: tuple = (1024, 2048), backend: str = 'torch') -> str:
    """Measure forward time in-process, then end-to-end latency through a node process."""
    frames = synthetic_stereo(2, size)
    seg = Segmenter(model, weights=None, device=device, backend=backend)
    batch = list(frames[0])
    forward = time_call(lambda: seg.predict(batch), warmup=1, runs=max(2, runs // 2))
    device_used = str(seg.device)
    seg.close()

    env_set = 'FASTDDS_BUILTIN_TRANSPORTS' not in os.environ
    if env_set:  # this process publishes 2-megapixel images too
        os.environ['FASTDDS_BUILTIN_TRANSPORTS'] = 'LARGE_DATA'
    proc = _node_process(model, device, backend)
    rclpy.init()
    player = rclpy.create_node('cityseg_bench_player', namespace=NODE_NAMESPACE)
    executor = SingleThreadedExecutor()
    executor.add_node(player)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    error: Optional[str] = None
    try:
        diag = _diagnostics_listener(player)
        with tempfile.TemporaryDirectory() as tmp:
            recorder = Recorder(player, ['left', 'right'], Path(tmp), keep=0)
            if not _wait(lambda: diag.get('state') == 'active', 120.0):
                raise RuntimeError('segment_node did not become active in 120 s')
            # One pair at a time, slower than the node: latency without queueing.
            period_hz = 1e3 / (1.5 * forward.median_ms + 100.0)
            publish_frames(player, iter(frames * runs), 1, period_hz, ['left', 'right'])
            _wait(lambda: recorder.latency.count >= 1, 60.0)
            recorder.latency.clear()
            publish_frames(player, iter(frames * runs), runs, period_hz, ['left', 'right'])
            _wait(lambda: recorder.latency.count >= runs, 60.0)
            time.sleep(1.5)  # one more diagnostics message with the final statistics
    except RuntimeError as exc:
        error = str(exc)
    finally:
        executor.shutdown()
        player.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if env_set:
            del os.environ['FASTDDS_BUILTIN_TRANSPORTS']
    label = f'{model} {size[1]}x{size[0]} stereo pair, {device_used}, {backend}'
    if error:
        return markdown_table(['setup', 'error'], [[label, error]])
    e2e50, e2e95 = recorder.latency.percentile(50), recorder.latency.percentile(95)
    inference = float(diag.get('inference_p50_ms', 'nan'))
    rows = [[label, f'{forward.median_ms:.1f}', f'{inference:.1f}', f'{e2e50:.1f}',
             f'{e2e95:.1f}', f'{e2e50 - inference:.1f}', diag.get('dropped_pairs', '?')]]
    header = ['setup', 'predict ms in-process (p50)', 'inference ms in node (p50)',
              'end-to-end ms (p50)', 'end-to-end ms (p95)', 'node overhead ms (p50)',
              'dropped']
    return markdown_table(header, rows)
