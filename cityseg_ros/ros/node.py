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

"""The live node: stereo images in, semantic labels, colours, overlays and diagnostics out.

Lifecycle (DESIGN.md, "Threads in the node"): configure reads the parameters, builds and warms
up the Segmenter and creates the publishers; activate starts the worker and subscribes;
deactivate and cleanup undo that in reverse and free the model. Subscription callbacks only
decode and pair; the matched pair goes to the worker's one-slot mailbox (an older pending pair
is dropped and counted), and the worker thread runs both images as one batch, renders only the
outputs somebody subscribes to and publishes them with the input header. The executor never
waits for the model.
"""

from collections import Counter
from dataclasses import dataclass
import functools
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from cityseg_ros import render
from cityseg_ros.errors import CitysegError, ImageError
from cityseg_ros.pairing import Matched, StampPairer
from cityseg_ros.ros.messages import confidence_msg, image_to_rgb, labels_msg, rgb_msg, stamp_ns
from cityseg_ros.ros.params import (declare_params, NodeParams, on_set_parameters, PARAMS,
                                    read_params, stereo_params)
from cityseg_ros.ros.pointcloud import cloud_msg
from cityseg_ros.ros.qos import (input_qos, output_qos, publisher_event_callbacks,
                                 subscription_event_callbacks)
from cityseg_ros.stereo import semantic_cloud, StereoModel, StereoParams
from cityseg_ros.worker import LatencyWindow, Worker
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

__all__ = ['SegmentNode', 'SegmenterLike', 'default_segmenter_factory', 'main', 'OUTPUTS']

#: Output names under ``C/semantic/``, in publishing order.
OUTPUTS = ('labels', 'color', 'overlay', 'confidence')
#: Seconds between two log lines of the same bad-input kind (hot paths).
THROTTLE_S = 5.0
#: Frames kept per camera while the pairer waits for the partner.
MAX_PENDING = 8


class SegmenterLike(Protocol):
    """What the node needs of a :class:`cityseg_ros.engine.Segmenter` (tests inject others)."""

    def predict(self, images: Sequence[np.ndarray], confidence: bool = False) -> list:
        """Return one Prediction (``labels``, ``confidence``) per HxWx3 uint8 RGB image."""

    def warmup(self, batch_size: int = 1) -> float:
        """Run the model once or twice; return ms of the last pass."""

    def close(self) -> None:
        """Free the model (and GPU memory)."""


SegmenterFactory = Callable[[NodeParams], SegmenterLike]


def default_segmenter_factory(params: NodeParams) -> SegmenterLike:
    """Build the engine's Segmenter from the node's parameters."""
    # Imported here: torch's import costs a second or two, paid at configure, not at start.
    from cityseg_ros.engine import Segmenter

    return Segmenter(params.model, weights=params.weights_arg, device=params.device,
                     precision=params.precision, tta=params.tta,
                     input_size=params.input_size)


@dataclass(frozen=True)
class _Frame:
    """A decoded input image, kept with its header until published."""

    header: Header
    rgb: np.ndarray
    received: float  # time.monotonic() when the callback got it


@dataclass(frozen=True)
class _Pair:
    """What goes through the worker's mailbox: the frames of one stamp, by camera."""

    stamp_ns: int
    frames: Dict[str, _Frame]
    received: float  # the latest receive time of its frames


def _size(rgb: np.ndarray) -> str:
    return f'{rgb.shape[1]}x{rgb.shape[0]}'


class SegmentNode(LifecycleNode):
    """Lifecycle node that segments rectified stereo images with a zoo model.

    Args:
        segmenter_factory: builds the model from :class:`NodeParams` at configure; default
            :func:`default_segmenter_factory`. Tests inject small stand-ins here.
        node_name: the node's name.
        **kwargs: passed to ``rclpy.node.Node`` (``namespace``, ``parameter_overrides``,
            ``context``, ``cli_args`` ...).
    """

    def __init__(self, segmenter_factory: Optional[SegmenterFactory] = None,
                 node_name: str = 'segment_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        declare_params(self)
        self.add_on_set_parameters_callback(lambda ps: on_set_parameters(self, ps))
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._factory = segmenter_factory or default_segmenter_factory
        self._lock = threading.Lock()
        self._state = 'unconfigured'
        self._error: Optional[str] = None
        self._params: Optional[NodeParams] = None
        self._seg: Optional[SegmenterLike] = None
        self._device = 'none'
        self._pubs: Dict[str, Dict[str, Any]] = {}
        self._points_pub: Optional[Any] = None
        self._stereo: Optional[StereoParams] = None  # rebuilt when a points_* value changes
        self._subs: List[Any] = []
        self._pairer: Optional[StampPairer] = None
        self._last_submit = 0.0
        self._unpaired_logged = 0
        self._camera_info: Dict[str, CameraInfo] = {}
        self._counts: Counter = Counter()
        self._published: Counter = Counter()
        self._latency = LatencyWindow()  # header stamp -> publish, ms (ROS clock)
        self._node_latency = LatencyWindow()  # callback receive -> publish, ms (monotonic)
        self._points_ms = LatencyWindow()  # disparity + cloud + message, ms
        self._worker: Worker[_Pair] = Worker(self._process, on_error=self._on_worker_error,
                                             name=f'{node_name}-worker')
        self._input_group = ReentrantCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._diag_last = (time.monotonic(), 0, 0, 0)
        self._diag_timer = self.create_timer(1.0, self.publish_diagnostics)

    # -- lifecycle ------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, build and warm up the model, create the publishers."""
        log = self.get_logger()
        seg = None
        try:
            params = read_params(self)
            start = time.perf_counter()
            seg = self._factory(params)
            warm_ms = seg.warmup(batch_size=len(params.cameras))
        except Exception as exc:  # noqa: B902 -- reported, the node stays up
            if seg is not None:
                seg.close()
            if isinstance(exc, CitysegError):
                return self._fail('configure', exc)
            log.error(traceback.format_exc())  # a bug: keep the traceback
            return self._fail('configure', exc, TransitionCallbackReturn.ERROR)
        self._params, self._seg = params, seg
        self._pairer = StampPairer(params.input_cameras, int(params.pair_tolerance_ms * 1e6),
                                   max_pending=MAX_PENDING)
        self._stereo = None
        self._unpaired_logged = 0
        self._device = str(getattr(seg, 'device', params.device))
        enabled = {'labels': True, 'color': params.publish_color,
                   'overlay': params.publish_overlay, 'confidence': params.publish_confidence}
        qos = output_qos()
        for cam in params.cameras:
            self._pubs[cam] = {}
            for output in OUTPUTS:
                if not enabled[output]:
                    continue
                topic = f'{cam}/semantic/{output}'
                self._pubs[cam][output] = self.create_lifecycle_publisher(
                    Image, topic, qos, event_callbacks=publisher_event_callbacks(
                        self.resolve_topic_name(topic), qos, log.warning,
                        functools.partial(self._count, 'incompatible_qos')))
        if params.publish_points:
            self._points_pub = self.create_lifecycle_publisher(
                PointCloud2, 'semantic/points', qos, event_callbacks=publisher_event_callbacks(
                    self.resolve_topic_name('semantic/points'), qos, log.warning,
                    functools.partial(self._count, 'incompatible_qos')))
        self._error = None
        self._state = 'inactive'
        log.info(f'configured {params.model} on {self._device} ({params.precision}, '
                 f'tta {params.tta}) in {time.perf_counter() - start:.1f} s, warm-up '
                 f'{warm_ms or 0.0:.0f} ms; cameras {list(params.cameras)}, outputs '
                 f'{[o for o in OUTPUTS if enabled[o]]}')
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the worker and subscribe to the images and camera infos."""
        params = self._params
        assert params is not None  # the state machine only activates a configured node
        ret = super().on_activate(state)  # publishers on before the first frame
        self._worker.start()
        qos = input_qos(params.input_reliability, params.input_depth)
        warn = self.get_logger().warning
        for cam in params.input_cameras:
            for topic, msg_type, callback in (
                    (f'{cam}/image_rect_color', Image, self._on_image),
                    (f'{cam}/camera_info', CameraInfo, self._on_camera_info)):
                events = subscription_event_callbacks(
                    self.resolve_topic_name(topic), qos, warn,
                    functools.partial(self._count, 'incompatible_qos'))
                self._subs.append(self.create_subscription(
                    msg_type, topic, functools.partial(callback, cam), qos,
                    callback_group=self._input_group, event_callbacks=events))
        self._state = 'active'
        self.get_logger().info(
            f'active: subscribed to {[s.topic_name for s in self._subs]} '
            f'({params.input_reliability}, depth {params.input_depth})')
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker after its current pair, switch publishers off."""
        self._stop_inputs()
        self._state = 'inactive'
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and free the model."""
        self._release()
        self._state = 'unconfigured'
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything, from whichever state."""
        self._stop_inputs()
        self._release()
        self._state = 'finalized'
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Tear down after a failed transition; back to unconfigured."""
        self._stop_inputs()
        self._release()
        self._state = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        """Stop the worker and free the model before the node's handles go."""
        self._stop_inputs()
        self._release()
        super().destroy_node()

    def _fail(self, transition: str, exc: BaseException,
              ret: TransitionCallbackReturn = TransitionCallbackReturn.FAILURE
              ) -> TransitionCallbackReturn:
        self._error = f'{transition} failed: {exc}'
        self.get_logger().error(self._error)
        return ret

    def _stop_inputs(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._worker.stop()
        if self._pairer is not None:
            self._pairer.clear()

    def _release(self) -> None:
        for pubs in self._pubs.values():
            for pub in pubs.values():
                self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        if self._points_pub is not None:
            self.destroy_lifecycle_publisher(self._points_pub)
            self._points_pub = None
        if self._seg is not None:
            self._seg.close()
        self._seg = None
        self._params = None
        self._pairer = None
        self._device = 'none'

    # -- inputs (executor threads) -------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        self._camera_info[camera] = msg
        self._count(f'{camera}_camera_info')

    def _on_image(self, camera: str, msg: Image) -> None:
        received = time.monotonic()
        self._count(f'{camera}_images')
        try:
            rgb = image_to_rgb(msg)
        except ImageError as exc:
            self._count('rejected')
            self._count('rejected_bad_image')
            self.get_logger().error(
                f'rejected an image on {self.resolve_topic_name(f"{camera}/image_rect_color")}'
                f': {exc}', throttle_duration_sec=THROTTLE_S)
            return
        pairer = self._pairer
        if pairer is None or self._state != 'active':  # deactivated while this callback ran
            return
        matched = pairer.push(camera, stamp_ns(msg.header), _Frame(msg.header, rgb, received))
        unpaired = pairer.stats.dropped
        if unpaired > self._unpaired_logged:
            self._unpaired_logged = unpaired
            self.get_logger().warning(
                f'{unpaired} image(s) so far found no partner within pair_tolerance_ms='
                f'{pairer.tolerance_ns / 1e6:g} ms; left and right need '
                'equal stamps (hardware sync) or a larger pair_tolerance_ms',
                throttle_duration_sec=THROTTLE_S)
        if matched is not None:
            self._on_matched(matched)

    def _on_matched(self, matched: Matched) -> None:
        params = self._params
        if params is None:
            return
        frames = {cam: matched.items[cam] for cam in params.input_cameras}
        shapes = {frame.rgb.shape for frame in frames.values()}
        if len(shapes) > 1:
            self._count('rejected')
            self._count('rejected_size_mismatch')
            sizes = ', '.join(f'{cam} {_size(f.rgb)}' for cam, f in frames.items())
            self.get_logger().error(
                f'rejected the pair at stamp {matched.stamp_ns} ns: image sizes differ ({sizes});'
                ' publish rectified images of one size', throttle_duration_sec=THROTTLE_S)
            return
        now = time.monotonic()
        rate = self.get_parameter('max_rate_hz').value
        with self._lock:
            if rate > 0.0 and now - self._last_submit < 1.0 / rate:
                self._counts['rate_limited'] += 1
                return
            self._last_submit = now
        self._worker.submit(_Pair(matched.stamp_ns, frames,
                                  max(f.received for f in frames.values())))

    # -- the worker thread ---------------------------------------------------------------------

    def _wanted(self) -> Dict[str, Dict[str, Any]]:
        """Per camera, the publishers that somebody listens to now."""
        return {cam: {name: pub for name, pub in pubs.items() if pub.get_subscription_count()}
                for cam, pubs in self._pubs.items()}

    def _process(self, pair: _Pair) -> None:
        seg, params = self._seg, self._params
        if seg is None or params is None:
            return
        wanted = self._wanted()
        points = self._points_pub is not None and self._points_pub.get_subscription_count() > 0
        if not any(wanted.values()) and not points:
            self._count('skipped_no_subscribers')
            return
        confidence = any('confidence' in outputs for outputs in wanted.values())
        frames = [pair.frames[cam] for cam in params.cameras]
        start = time.perf_counter()
        predictions = seg.predict([frame.rgb for frame in frames], confidence=confidence)
        self._worker.record_inference((time.perf_counter() - start) * 1e3)
        alpha = float(self.get_parameter('overlay_alpha').value)
        for cam, frame, prediction in zip(params.cameras, frames, predictions):
            self._publish(cam, wanted[cam], frame, prediction, alpha)
        if points:
            self._publish_points(pair, predictions[params.cameras.index('left')].labels)
        self._node_latency.add((time.monotonic() - pair.received) * 1e3)
        self._latency.add((self.get_clock().now().nanoseconds - pair.stamp_ns) / 1e6)
        self._count('published_pairs')

    def _publish(self, cam: str, wanted: Dict[str, Any], frame: _Frame, prediction: Any,
                 alpha: float) -> None:
        labels, header = prediction.labels, frame.header
        messages = {}
        if 'labels' in wanted:
            messages['labels'] = labels_msg(labels, header)
        color = None
        if 'color' in wanted:
            color = render.colorize(labels)
            messages['color'] = rgb_msg(color, header)
        if 'overlay' in wanted:
            messages['overlay'] = rgb_msg(render.overlay(frame.rgb, labels, alpha, color=color),
                                          header)
        if 'confidence' in wanted and prediction.confidence is not None:
            messages['confidence'] = confidence_msg(prediction.confidence, header)
        for name, msg in messages.items():
            wanted[name].publish(msg)
        with self._lock:
            self._published.update(f'{cam}/{name}' for name in messages)

    def _publish_points(self, pair: _Pair, left_labels: np.ndarray) -> None:
        """Publish semantic/points for a pair, or say (throttled) why it cannot be built."""
        left, right = pair.frames['left'], pair.frames['right']
        reason = StereoModel.check(self._camera_info.get('left'),
                                   self._camera_info.get('right'), left.rgb.shape[:2])
        if reason is not None:
            self._count('points_skipped')
            self.get_logger().warning(f'semantic/points not published: {reason}',
                                      throttle_duration_sec=THROTTLE_S)
            return
        try:
            stereo = self._stereo or stereo_params(
                {p.name: self.get_parameter(p.name).value for p in PARAMS})
            self._stereo = stereo
            model = StereoModel.from_camera_info(self._camera_info['left'],
                                                 self._camera_info['right'], left.rgb.shape[:2])
            start = time.perf_counter()
            cloud = semantic_cloud(left.rgb, right.rgb, left_labels, model, stereo)
            self._points_pub.publish(cloud_msg(cloud, left.header))
            self._points_ms.add((time.perf_counter() - start) * 1e3)
        except CitysegError as exc:
            self._count('points_failed')
            self.get_logger().error(f'semantic/points failed: {exc}',
                                    throttle_duration_sec=THROTTLE_S)
            return
        with self._lock:
            self._published['semantic/points'] += 1

    def _on_parameters_set(self, parameters: List[Any]) -> None:
        if any(p.name.startswith(('points_', 'stereo_')) for p in parameters):
            self._stereo = None  # the worker rebuilds it from the new values

    def _on_worker_error(self, pair: _Pair, exc: BaseException) -> None:
        hint = ''
        if 'out of memory' in str(exc).lower():
            hint = '; lower input_height/input_width, use precision fp16/bf16 or a smaller model'
        if not isinstance(exc, CitysegError):
            self.get_logger().debug(traceback.format_exc())
        self.get_logger().error(
            f'segmentation failed for the frame at stamp {pair.stamp_ns} ns: '
            f'{type(exc).__name__}: {exc}{hint}', throttle_duration_sec=THROTTLE_S)

    # -- diagnostics ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The lifecycle state's label: unconfigured, inactive, active or finalized."""
        return self._state

    @property
    def counters(self) -> Dict[str, int]:
        """Return a snapshot of the input counters: images, rejected_*, rate_limited, unpaired."""
        with self._lock:
            counts = dict(self._counts)
        pairer = self._pairer
        if pairer is not None:
            stats = pairer.stats
            counts['pairs'] = stats.matched
            counts['unpaired'] = stats.dropped
        return counts

    @property
    def published(self) -> Dict[str, int]:
        """Messages published per ``camera/output`` since start."""
        with self._lock:
            return dict(self._published)

    @property
    def worker(self) -> Worker:
        """Return the inference worker, whose ``stats`` feed the diagnostics."""
        return self._worker

    @property
    def latency(self) -> LatencyWindow:
        """Header stamp -> publish latency, ms, on the node's clock."""
        return self._latency

    def diagnostics(self) -> DiagnosticStatus:
        """Build the node's DiagnosticStatus (rates since the previous call)."""
        now = time.monotonic()
        counts = self.counters
        stats = self._worker.stats
        pairs = counts.get('pairs', 0)
        images = sum(v for k, v in counts.items() if k.endswith('_images'))
        last_t, last_images, last_pairs, last_out = self._diag_last
        elapsed = max(now - last_t, 1e-3)
        published = counts.get('published_pairs', 0)
        self._diag_last = (now, images, pairs, published)
        params = self._params

        def ms(value: Optional[float]) -> str:
            return 'n/a' if value is None else f'{value:.1f}'

        values = {
            'state': self._state,
            'model': params.model if params else self.get_parameter('model').value,
            'device': self._device,
            'precision': params.precision if params else '',
            'cameras': ','.join(params.cameras) if params else '',
            'input_images_hz': f'{(images - last_images) / elapsed:.2f}',
            'input_pairs_hz': f'{(pairs - last_pairs) / elapsed:.2f}',
            'output_hz': f'{(published - last_out) / elapsed:.2f}',
            'latency_p50_ms': ms(self._latency.percentile(50)),
            'latency_p95_ms': ms(self._latency.percentile(95)),
            'node_latency_p50_ms': ms(self._node_latency.percentile(50)),
            'node_latency_p95_ms': ms(self._node_latency.percentile(95)),
            'inference_p50_ms': ms(stats.inference_p50_ms),
            'inference_p95_ms': ms(stats.inference_p95_ms),
            'submitted_pairs': str(stats.submitted),
            'processed_pairs': str(stats.processed),
            'published_pairs': str(published),
            'dropped_pairs': str(stats.dropped),
            'failed_pairs': str(stats.failed),
            'rate_limited_pairs': str(counts.get('rate_limited', 0)),
            'rejected_messages': str(counts.get('rejected', 0)),
            'rejected_bad_image': str(counts.get('rejected_bad_image', 0)),
            'rejected_size_mismatch': str(counts.get('rejected_size_mismatch', 0)),
            'unpaired_images': str(counts.get('unpaired', 0)),
            'skipped_no_subscribers': str(counts.get('skipped_no_subscribers', 0)),
            'incompatible_qos_events': str(counts.get('incompatible_qos', 0)),
            'points_p50_ms': ms(self._points_ms.percentile(50)),
            'points_skipped': str(counts.get('points_skipped', 0)),
            'points_failed': str(counts.get('points_failed', 0)),
            'last_error': self._error or stats.last_error or '',
        }
        if self._error:
            level, message = DiagnosticStatus.ERROR, self._error
        elif self._state != 'active':
            level, message = DiagnosticStatus.WARN, f'{self._state}: not segmenting'
        elif stats.failed or counts.get('rejected', 0):
            level = DiagnosticStatus.WARN
            message = (f'{stats.failed} frame(s) failed, {counts.get("rejected", 0)} input(s) '
                       'rejected')
        else:
            level, message = DiagnosticStatus.OK, f'segmenting at {values["output_hz"]} Hz'
        return DiagnosticStatus(
            level=level, name=f'{self.get_fully_qualified_name()}: semantic segmentation',
            message=message, hardware_id=self._device,
            values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray on /diagnostics (the 1 Hz timer calls this)."""
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [self.diagnostics()]
        self._diag_pub.publish(array)


def main(args: Optional[List[str]] = None) -> int:
    """Run the node (console script ``segment_node``); ``autostart`` configures and activates.

    Returns:
        0 after a normal shutdown (Ctrl-C, SIGTERM); 2 when a parameter override is rejected
        at start (out of range, wrong type), after one log line that says which and why.
    """
    rclpy.init(args=args)
    node = None
    try:
        node = SegmentNode()
        if node.get_parameter('autostart').value:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                node.trigger_activate()
            else:
                node.get_logger().error('autostart: configure failed; fix the parameters and '
                                        'call configure (ros2 lifecycle set) again')
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterException as exc:  # an override rclpy rejected while declaring
        hint = ('; float parameters need a decimal point, e.g. max_rate_hz:=10.0'
                if isinstance(exc, InvalidParameterTypeException) else '')
        rclpy.logging.get_logger('segment_node').error(f'{exc}{hint}')
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
