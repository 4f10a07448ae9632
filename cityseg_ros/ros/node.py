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

"""The live node: N camera images in, semantic labels, colours, overlays and diagnostics out.

Lifecycle (DESIGN.md, "Threads in the node"): configure reads the parameters, loads the label
space, builds and warms up the Segmenter and creates the publishers; activate starts the worker
(and the decode threads) and subscribes; deactivate and cleanup undo that in reverse and free
the model.

Threads: raw images are checked and decoded in the subscription callback (zero-copy for rgb8,
under a millisecond for the other encodings of a 2-megapixel image); compressed images only
have their stamp and ``format`` checked there and are decoded on threads of their own
(``compressed_input.py``), so a 15 ms JPEG decode never holds an executor thread. Frames are
grouped (``sync: exact``: one frame per camera within
``pair_tolerance_ms``, into the worker's one-slot mailbox, an older pending group dropped and
counted; ``sync: none``: each camera's newest frame waits in :class:`LatestFrames` and the
worker takes them all as one batch). The worker runs the batch through the model (only the
cameras somebody listens to), renders and encodes only the wanted outputs and publishes them
with the input header. The executor never waits for the model.

The parts live beside it: ``inputs.py`` (subscriptions, QoS matching, loss counting),
``outputs.py`` (per-camera outputs in the label space), ``compressed_input.py`` (decoding off
the executor), ``points.py`` (semantic/points, its own
failures), ``diagnostics.py`` (level and reason), ``pairs.py`` and the pairer's time-jump
recovery (``cityseg_ros.pairing``), ``cityseg_ros.camera_group`` (``sync: none``). No input ends
the node or leaves it in another state than the one it was told to be in: every callback counts
and logs its problems.
"""

from collections import Counter
from dataclasses import dataclass
import functools
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

from cityseg_ros.camera_group import LatestFrames
from cityseg_ros.compressed import parse_format
from cityseg_ros.errors import CitysegError, ConfigError, ImageError
from cityseg_ros.label_spaces import get_label_space
from cityseg_ros.pairing import Matched
from cityseg_ros.ros.compressed_input import CompressedInput
from cityseg_ros.ros.diagnostics import (assess, camera_values, clip_text, counter_values,
                                         CounterWindow, describe_clock_jump, Facts,
                                         MAX_TEXT, window_seconds)
from cityseg_ros.ros.inputs import image_topic, InputSubscriptions
from cityseg_ros.ros.messages import (compressed_to_rgb, image_to_rgb, input_problem,
                                      size_problem, stamp_ns, stamp_problem)
from cityseg_ros.ros.outputs import LabelOutputs, OUTPUTS
from cityseg_ros.ros.pairs import JUMP_NS, LivePairer
from cityseg_ros.ros.params import (declare_params, MIN_INPUT_SIDE, NodeParams,
                                    on_set_parameters, PARAMS, read_params, ros_hint)
from cityseg_ros.ros.points import camera_info_problem, PointsOutput
from cityseg_ros.ros.qos import output_qos, publisher_event_callbacks
from cityseg_ros.worker import LatencyWindow, Worker
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.validate_full_topic_name import validate_full_topic_name
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header

__all__ = ['SegmentNode', 'SegmenterLike', 'default_segmenter_factory', 'main', 'OUTPUTS']

#: Seconds between two log lines of the same bad-input kind (hot paths).
THROTTLE_S = 5.0
#: Stamp -> publish latencies outside [0, this] ms are clock trouble, not statistics (a bag
#: played without use_sim_time, a camera on another clock): counted, kept out of p50/p95.
MAX_LATENCY_MS = 60_000.0


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
                     input_size=params.input_size, backend=params.backend,
                     progress=rclpy.logging.get_logger('segment_node').info)


@dataclass(frozen=True)
class _Frame:
    """A decoded input image, kept with its header until published."""

    header: Header
    rgb: np.ndarray
    received: float  # time.monotonic() when the callback got it
    stamp_ns: int


@dataclass(frozen=True)
class _Pending:
    """A compressed image grouped before decoding (sync exact): headers are enough to pair."""

    header: Header
    msg: CompressedImage
    received: float
    stamp_ns: int


@dataclass(frozen=True)
class _Pair:
    """What goes through the worker's mailbox: one frame per camera (a group or a batch)."""

    stamp_ns: int
    frames: Dict[str, _Frame]
    received: float  # the latest receive time of its frames


#: With ``sync: none`` the mailbox holds this ticket; the worker takes the frames at its turn.
_TAKE_LATEST = _Pair(0, {}, 0.0)


class _Rejected(Exception):
    """A decoded compressed image the node refuses (kind as ``rejected_<kind>``, reason)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class SegmentNode(LifecycleNode):
    """Lifecycle node that segments the images of N cameras with a zoo model, one batch each.

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
        self._outputs: Optional[LabelOutputs] = None
        self._points: Optional[PointsOutput] = None
        self._inputs: Optional[InputSubscriptions] = None
        self._pairer: Optional[LivePairer] = None
        self._latest: Optional[LatestFrames] = None  # sync none
        self._decoder: Optional[CompressedInput] = None  # input_transport compressed
        self._infos: Dict[str, CameraInfo] = {}  # latest valid CameraInfo per camera
        self._last_submit = 0.0
        self._last_reject = ''
        self._last_jump = ''  # kept across configures; the pairer's is newer when set
        self._counts: Counter = Counter()
        self._published: Counter = Counter()
        self._latency = LatencyWindow()  # header stamp -> publish, ms (ROS clock)
        self._node_latency = LatencyWindow()  # callback receive -> publish, ms (monotonic)
        self._worker: Worker[_Pair] = Worker(self._process, on_error=self._on_worker_error,
                                             name=f'{node_name}-worker')
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._window = CounterWindow(time.monotonic())
        # A steady clock: under use_sim_time a ROS-time timer stops when /clock stops or
        # jumps back, and the diagnostics must say so rather than go silent.
        self._diag_timer = self.create_timer(1.0, self.publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._guard_clock_topic()
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=Duration(nanoseconds=JUMP_NS),
                          min_backward=Duration(nanoseconds=-JUMP_NS), on_clock_change=True),
            post_callback=self._on_clock_jump)

    def _guard_clock_topic(self) -> None:
        """Make a malformed /clock message a rejected input instead of the end of the node.

        rclpy's TimeSource turns each /clock message into a Time, which raises ValueError for a
        negative ``sec``; raised in the executor, that ended ``spin`` and the process (with
        ``use_sim_time``). rclpy has no hook for it: its callback is wrapped, and a /clock
        subscription made before this (use_sim_time set at start) is made again with it.
        """
        source = self._time_source
        plain = source.clock_callback

        def checked(msg: Any) -> None:
            try:
                plain(msg)
            except (ValueError, OverflowError) as exc:
                self._reject('bad_stamp', '/clock', f'clock {msg.clock.sec} s '
                             f'{msg.clock.nanosec} ns is not a time ({exc}); the ROS clock '
                             'stays where it was')

        source.clock_callback = checked
        if source.ros_time_is_active:  # subscribed with the plain callback: subscribe again
            source.ros_time_is_active = False
            source.ros_time_is_active = True

    # -- lifecycle ------------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, build and warm up the model, create the publishers."""
        log = self.get_logger()
        seg = None
        try:
            params = read_params(self)
            self._check_topic_names(params)
            space = get_label_space(params.label_space, params.label_map)
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
        self._pairer = LivePairer(params.cameras, params.pair_tolerance_ms, log,
                                  self._count, self._lost, sync=params.sync,
                                  camera_timeout_s=params.camera_timeout_s)
        # sync none: the cloud pairs a left frame with the newest right one.
        self._latest = (LatestFrames(params.cameras, params.stereo_cameras[1:] if params.points
                                     else ()) if params.sync == 'none' else None)
        self._infos = {}
        if params.input_transport == 'compressed':
            self._decoder = CompressedInput(f'{self.get_name()}-decode', params.sync,
                                            params.decode_threads, self._decode,
                                            self._on_decoded, self._on_group_decoded,
                                            self._on_decode_error)
        self._device = str(getattr(seg, 'device', params.device))
        self._outputs = LabelOutputs(self._publisher, params.cameras, {
            'color': params.publish_color, 'overlay': params.publish_overlay,
            'confidence': params.publish_confidence}, space)
        outputs = self._outputs.names
        if params.points:
            self._points = PointsOutput(self._publisher(PointCloud2, 'semantic/points'),
                                        params.stereo_cameras, self._values(), log,
                                        functools.partial(self._count, n=1), space)
            outputs.append('semantic/points')
        self._error = None
        self._state = 'inactive'
        log.info(f'configured {params.model} on {self._device} ({params.precision}, '
                 f'tta {params.tta}) in {time.perf_counter() - start:.1f} s, warm-up '
                 f'{warm_ms or 0.0:.0f} ms; cameras {list(params.cameras)} (sync '
                 f'{params.sync}, {params.input_transport}), label space {space.name}, '
                 f'outputs {outputs}')
        if not params.points:
            log.info(f'no semantic/points: stereo_cameras {list(params.stereo_cameras)} are '
                     f'not both in cameras')
        return super().on_configure(state)

    def _check_topic_names(self, params: NodeParams) -> None:
        """Refuse camera names whose topics rcl would refuse, before the model is built.

        ``cameras`` accepts any relative name, but a full topic name has at most 247
        characters: creating the publishers raised, and rclpy turned that into a configure
        ERROR without a word (no log line, nothing in /diagnostics).

        Raises:
            ConfigError: naming the camera, the topic and rcl's reason.
        """
        for cam in params.cameras:
            for name in (image_topic(cam, params.input_transport), f'{cam}/camera_info',
                         *(f'{cam}/semantic/{out}' for out in OUTPUTS)):
                try:
                    validate_full_topic_name(self.resolve_topic_name(name))
                except Exception as exc:  # noqa: B902 -- rclpy's InvalidTopicNameException
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ''
                    raise ConfigError(
                        f'cameras: {clip_text(repr(cam), 200)} gives the topic '
                        f'{clip_text(self.get_namespace().rstrip("/") + "/" + name, 300)}, '
                        f'which rcl refuses ({clip_text(reason, 200)}); use a shorter camera '
                        'name or namespace') from None

    def _publisher(self, msg_type: Any, topic: str) -> Any:
        qos = output_qos()
        return self.create_lifecycle_publisher(
            msg_type, topic, qos, event_callbacks=publisher_event_callbacks(
                self.resolve_topic_name(topic), qos, self.get_logger().warning,
                functools.partial(self._count, 'incompatible_qos')))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the worker and subscribe to the images and camera infos."""
        params = self._params
        assert params is not None  # the state machine only activates a configured node
        ret = super().on_activate(state)  # publishers on before the first frame
        self._worker.start()
        if self._latest is not None:
            self._latest.clear()  # a ticket dropped at the last stop must not block the next
        if self._decoder is not None:
            self._decoder.start()
        on_image = self._on_compressed if self._decoder is not None else self._on_image
        self._inputs = InputSubscriptions(
            self, params.input_cameras, params.input_reliability, params.input_depth,
            on_image, self._on_camera_info, self._count, transport=params.input_transport)
        self._inputs.start()
        self._state = 'active'
        self.get_logger().info(
            f'active: subscribed to {self._inputs.topic_names} (input_reliability '
            f'{params.input_reliability}: {self._inputs.summary()}; depth {params.input_depth})')
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
        # The library's hints name command-line flags; a node user sets parameters.
        self._error = f'{transition} failed: {ros_hint(str(exc))}'
        self.get_logger().error(self._error)
        return ret

    def _stop_inputs(self) -> None:
        if self._inputs is not None:
            self._inputs.stop()
            self._inputs = None
        if self._decoder is not None:
            self._decoder.stop()
        self._worker.stop()
        if self._pairer is not None:
            self._pairer.clear()
        if self._latest is not None:
            self._latest.clear()

    def _release(self) -> None:
        if self._outputs is not None:
            self._outputs.destroy(self.destroy_lifecycle_publisher)
            self._outputs = None
        if self._points is not None:
            self.destroy_lifecycle_publisher(self._points.publisher)
            self._points = None
        if self._seg is not None:
            self._seg.close()
        self._seg = None
        self._params = None
        self._pairer = None
        self._latest = None
        self._decoder = None
        self._infos = {}
        self._device = 'none'

    def _values(self) -> Dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in PARAMS}

    # -- inputs (executor threads) -------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _reject(self, kind: str, topic: str, reason: str) -> None:
        """Count a refused input and say why (throttled): bad input never stops the node."""
        with self._lock:
            self._counts['rejected'] += 1
            self._counts[f'rejected_{kind}'] += 1
        reason = clip_text(reason)  # it may quote a 1 MB encoding or format string
        self._last_reject = f'{topic}: {reason}'
        self.get_logger().error(f'rejected a message on {self.resolve_topic_name(topic)}: '
                                f'{reason}', throttle_duration_sec=THROTTLE_S)

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        self._count(f'{camera}_camera_info')
        try:
            problem = camera_info_problem(msg)
            if problem is not None:
                self._reject('camera_info', f'{camera}/camera_info', problem)
                return
            self._infos[camera] = msg  # keys: the configured cameras only
            if self._points is not None:
                self._points.on_camera_info(camera, msg)
        except Exception as exc:  # noqa: B902 -- a hostile message must not end the node
            self._internal_error(f'{camera}/camera_info', exc)

    def _on_image(self, camera: str, msg: Image) -> None:
        """Raw input (executor thread): check, decode (cheap for raw), group."""
        received = time.monotonic()
        self._count(f'{camera}_images')
        topic = image_topic(camera)
        try:
            problem = input_problem(msg, MIN_INPUT_SIDE)
            if problem is not None:
                self._reject(problem[0], topic, problem[1])
                return
            try:
                rgb = image_to_rgb(msg)
            except ImageError as exc:
                self._reject('bad_image', topic, str(exc))
                return
            self._accept(camera, topic, _Frame(msg.header, rgb, received, stamp_ns(msg.header)))
        except Exception as exc:  # noqa: B902 -- a hostile message must not end the node
            self._internal_error(topic, exc)

    def _on_compressed(self, camera: str, msg: CompressedImage) -> None:
        """Compressed input (executor thread): check stamp and format, hand to the decoders."""
        received = time.monotonic()
        self._count(f'{camera}_images')
        topic = image_topic(camera, 'compressed')
        try:
            problem = stamp_problem(msg.header)
            if problem is not None:
                self._reject('bad_stamp', topic, problem)
                return
            try:
                parse_format(msg.format)  # a string: cheap; refused before any decoding
            except ImageError as exc:
                self._reject('bad_format', topic, str(exc))
                return
            decoder, params = self._decoder, self._params
            if decoder is None or params is None:
                return
            if params.sync == 'exact':  # group by stamp first: decode whole groups
                self._accept(camera, topic, _Pending(msg.header, msg, received,
                                                     stamp_ns(msg.header)))
            else:
                decoder.submit_frame(camera, msg, received)  # returns at once
        except Exception as exc:  # noqa: B902 -- a hostile message must not end the node
            self._internal_error(topic, exc)

    # -- decode threads (input_transport compressed) ---------------------------------------------

    def _decode(self, camera: str, msg: CompressedImage) -> np.ndarray:
        rgb = compressed_to_rgb(msg, self.resolve_topic_name(image_topic(camera, 'compressed')))
        problem = size_problem(rgb.shape[1], rgb.shape[0], MIN_INPUT_SIDE)
        if problem is not None:
            raise _Rejected(*problem)
        return rgb

    def _on_decoded(self, camera: str, msg: CompressedImage, rgb: np.ndarray,
                    received: float) -> None:
        self._accept(camera, image_topic(camera, 'compressed'),
                     _Frame(msg.header, rgb, received, stamp_ns(msg.header)))

    def _on_group_decoded(self, matched: Matched, rgbs: Dict[str, np.ndarray]) -> None:
        if self._state != 'active':
            return
        frames = {cam: _Frame(p.header, rgbs[cam], p.received, p.stamp_ns)
                  for cam, p in matched.items.items()}
        self._on_matched(Matched(matched.stamp_ns, frames, matched.stamps))

    def _on_decode_error(self, camera: str, msg: CompressedImage, exc: BaseException) -> None:
        topic = image_topic(camera, 'compressed')
        if isinstance(exc, _Rejected):
            self._reject(exc.kind, topic, str(exc))
        elif isinstance(exc, ImageError):
            self._reject('bad_image', topic, str(exc))
        else:
            self._internal_error(topic, exc)

    # -- grouping (executor or decode threads) ---------------------------------------------------

    def _accept(self, camera: str, topic: str, frame: Any) -> None:
        """Group one frame; hand a complete group (or a batch ticket) on.

        ``frame`` is a decoded :class:`_Frame`, or a :class:`_Pending` compressed image whose
        complete group goes to the decoders first (sync exact).
        """
        pairer = self._pairer
        if pairer is None or self._state != 'active':
            return  # deactivated while this frame was decoded
        matched = pairer.push(camera, frame.header, frame.stamp_ns, frame,
                              self.resolve_topic_name(topic))
        if pairer.last_jump:
            self._last_jump = pairer.last_jump
        if matched is None:
            return
        if isinstance(frame, _Pending):
            if self._decoder is not None:
                self._decoder.submit_group(matched)
            return
        latest = self._latest
        if latest is None:
            self._on_matched(matched)
            return
        with self._lock:  # sync none: the frame waits; one ticket at a time, at the rate
            now = time.monotonic()
            ticket = latest.put(camera, frame, ready=self._rate_allows(now, reserve=False))
            if ticket:
                self._last_submit = now
        if ticket:
            self._worker.submit(_TAKE_LATEST)

    def _rate_allows(self, now: float, reserve: bool = True) -> bool:
        """Whether a batch may start now (``max_rate_hz``); call under ``self._lock``.

        With ``reserve`` an allowed start is booked (the next one waits a period).
        """
        rate = self.get_parameter('max_rate_hz').value
        if rate > 0.0 and now - self._last_submit < 1.0 / rate:
            return False
        if reserve:
            self._last_submit = now
        return True

    def _lost(self) -> int:
        with self._lock:
            return sum(v for k, v in self._counts.items() if k.endswith('_lost'))

    def _on_matched(self, matched: Matched) -> None:
        """Hand a complete group (sync exact) to the mailbox (newest wins), at the rate."""
        frames = matched.items
        now = time.monotonic()  # steady: a ROS clock jump must not block or flood the model
        with self._lock:
            if not self._rate_allows(now):
                self._counts['rate_limited'] += 1
                return
        self._worker.submit(_Pair(matched.stamp_ns, frames,
                                  max(f.received for f in frames.values())))

    def _internal_error(self, topic: str, exc: BaseException) -> None:
        self._count('internal_errors')
        self.get_logger().error(f'unexpected error on {topic} (the node goes on): '
                                f'{type(exc).__name__}: {clip_text(str(exc))}\n'
                                f'{clip_text(traceback.format_exc(), 8 * MAX_TEXT)}',
                                throttle_duration_sec=THROTTLE_S)

    def _on_clock_jump(self, jump: Any) -> None:
        """Restart latency and pairing after a ROS clock jump (use_sim_time, /clock)."""
        try:
            self._clock_jumped(jump)
        except Exception as exc:  # noqa: B902 -- called from the /clock subscription
            self._internal_error('/clock', exc)

    def _clock_jumped(self, jump: Any) -> None:
        change = getattr(jump.clock_change, 'name', str(jump.clock_change))
        delta_ns = jump.delta.nanoseconds
        what = describe_clock_jump(change, delta_ns, self.get_clock().now().nanoseconds)
        self._count('clock_jumps')
        self._last_jump = what
        if self._pairer is not None:
            self._pairer.last_jump = what
        # Stamp -> now on the old clock says nothing about the new one.
        self._latency.clear()
        pairer = self._pairer
        if pairer is not None and (delta_ns < 0 or change != 'ROS_TIME_NO_CHANGE'):
            pairer.clear()
        self.get_logger().warning(f'{what}: latency statistics restarted',
                                  throttle_duration_sec=THROTTLE_S)

    # -- the worker thread ---------------------------------------------------------------------

    def _process(self, pair: _Pair) -> None:
        seg, params, outputs, points = self._seg, self._params, self._outputs, self._points
        if seg is None or params is None or outputs is None:
            return
        if pair is _TAKE_LATEST:
            pair = self._take_latest()
            if pair is None:
                return
        wanted = outputs.wanted()
        cloud = points is not None and points.wanted()
        left = points.cameras[0] if points is not None else None
        # Only the cameras somebody listens to go through the model (and the cloud's left).
        cams = [cam for cam in params.cameras if cam in pair.frames
                and (wanted[cam] or (cloud and cam == left))]
        if not cams:
            self._count('skipped_no_subscribers')
            return
        confidence = any('confidence' in wanted[cam] for cam in cams)
        frames = [pair.frames[cam] for cam in cams]
        start = time.perf_counter()
        predictions = seg.predict([frame.rgb for frame in frames], confidence=confidence)
        self._worker.record_inference((time.perf_counter() - start) * 1e3)
        alpha = float(self.get_parameter('overlay_alpha').value)
        sent = 0
        for cam, frame, prediction in zip(cams, frames, predictions):
            names = outputs.publish(wanted[cam], frame.rgb, frame.header, prediction, alpha,
                                    self._infos.get(cam))
            if 'camera_info' in wanted[cam] and 'camera_info' not in names:
                self._count('camera_info_missing')
                self.get_logger().warning(
                    f'{cam}/semantic/camera_info not published: no valid {cam}/camera_info '
                    'received yet', throttle_duration_sec=THROTTLE_S)
            with self._lock:
                self._published.update(f'{cam}/{name}' for name in names)
                if names:
                    self._counts[f'{cam}_segmented'] += 1
            if names:
                self._record_latency(frame)
                sent += 1
        if cloud and left in cams:
            # A cloud problem is the cloud's (counted, logged there), never the batch's.
            labels = predictions[cams.index(left)].labels
            stereo = self._stereo_frames(pair, points)
            if stereo is not None and points.publish(stereo, labels):
                with self._lock:
                    self._published['semantic/points'] += 1
                if not sent:
                    self._record_latency(pair.frames[left])
                sent += 1
        if sent:
            self._count('published_pairs')

    def _take_latest(self) -> Optional[_Pair]:
        """Take the newest frame of every camera that sent one since the last batch (sync none)."""
        latest = self._latest
        frames = latest.take() if latest is not None else {}
        if not frames:
            return None
        return _Pair(max(f.stamp_ns for f in frames.values()), frames,
                     max(f.received for f in frames.values()))

    def _stereo_frames(self, pair: _Pair, points: PointsOutput) -> Optional[Dict[str, _Frame]]:
        """Return the stereo frames of this batch; with sync none the right one may be older."""
        left_cam, right_cam = points.cameras
        left, right = pair.frames[left_cam], pair.frames.get(right_cam)
        if right is None and self._latest is not None:
            right = self._latest.newest(right_cam)
        if right is None:
            points.skip(f'no {right_cam} image in this group: {right_cam} stopped sending '
                        '(left out after camera_timeout_s)' if self._latest is None
                        else f'no {right_cam} image has arrived yet')
            return None
        gap_ms = abs(left.stamp_ns - right.stamp_ns) / 1e6
        tolerance = self._params.pair_tolerance_ms if self._params else 0.0
        if gap_ms > tolerance:
            points.skip(f'the newest {left_cam} and {right_cam} images are {gap_ms:.1f} ms '
                        f'apart (pair_tolerance_ms={tolerance:g}); sync none does not match '
                        'stamps: use sync:=exact for a stereo rig')
            return None
        return {left_cam: left, right_cam: right}

    def _record_latency(self, frame: _Frame) -> None:
        self._node_latency.add((time.monotonic() - frame.received) * 1e3)
        age_ms = (self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e6
        if 0.0 <= age_ms <= MAX_LATENCY_MS:
            self._latency.add(age_ms)
        else:
            self._count('latency_excluded')

    def _on_parameters_set(self, parameters: List[Any]) -> None:
        points = self._points
        if points is not None and any(p.name.startswith(('points_', 'stereo_'))
                                      for p in parameters):
            try:
                points.update_settings(self._values)  # one atomic hand-over to the worker
            except ConfigError as exc:  # the on-set check passed them: should not happen
                self.get_logger().error(f'stereo settings not applied: {exc}')

    def _on_worker_error(self, pair: _Pair, exc: BaseException) -> None:
        hint = ''
        if 'out of memory' in str(exc).lower():
            hint = '; lower input_height/input_width, use precision fp16/bf16 or a smaller model'
        if not isinstance(exc, CitysegError):
            self.get_logger().debug(traceback.format_exc())
        which = ('a batch' if pair is _TAKE_LATEST
                 else f'the frames at stamp {pair.stamp_ns} ns')
        self.get_logger().error(
            f'segmentation failed for {which}: {type(exc).__name__}: '
            f'{ros_hint(str(exc))}{hint}', throttle_duration_sec=THROTTLE_S)

    # -- diagnostics ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The lifecycle state's label: unconfigured, inactive, active or finalized."""
        return self._state

    @property
    def counters(self) -> Dict[str, int]:
        """Return a snapshot of the input counters: images, rejected_*, rate_limited, unpaired.

        Per camera ``C``: ``C_images`` (received), ``C_segmented`` (frames whose outputs were
        published), ``C_unpaired`` and ``C_left_out`` (sync exact), ``C_dropped`` (sync none:
        replaced while waiting for the batch), ``C_decode_dropped`` / ``C_decode_failed``
        (compressed).
        """
        with self._lock:
            counts = dict(self._counts)
        pairer, latest, decoder = self._pairer, self._latest, self._decoder
        if pairer is not None:
            counts.update(pairer.counters())
        if latest is not None:
            counts.update({f'{cam}_dropped': n for cam, n in latest.dropped().items()})
        if decoder is not None:
            counts.update(decoder.counters())
        return counts

    def decode_ms(self, q: float) -> Optional[float]:
        """Return the q-th percentile of the decode time per compressed image, ms (or None)."""
        decoder = self._decoder
        return decoder.decode_ms.percentile(q) if decoder is not None else None

    @property
    def published(self) -> Dict[str, int]:
        """Messages published per ``camera/output`` (and ``semantic/points``) since start."""
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
        """Build the node's DiagnosticStatus (rates and judgement over the recent window)."""
        counts = self.counters
        stats = self._worker.stats
        params, inputs, points = self._params, self._inputs, self._points
        cameras = params.cameras if params else ()
        max_rate = float(self.get_parameter('max_rate_hz').value)
        jumps = (counts.get('time_jumps_back', 0) + counts.get('time_jumps_forward', 0)
                 + counts.get('clock_jumps', 0))
        cumulative = dict(counts, submitted=stats.submitted, failed=stats.failed,
                          time_jumps=jumps)
        window_s, delta = self._window.add(
            time.monotonic(), cumulative, window_seconds(stats.inference_p95_ms, max_rate))
        images = sum(v for k, v in counts.items() if k.endswith('_images'))
        facts = Facts(
            state=self._state, cameras=cameras, window_s=window_s, delta=delta,
            error=self._error,
            publishers={c: inputs.publishers(c) for c in cameras} if inputs else {},
            reliability={c: inputs.reliability(c) for c in cameras} if inputs else {},
            images_ever=images, tolerance_ms=params.pair_tolerance_ms if params else 0.0,
            stamp_gap_ms=self._pairer.stamp_gap_ms() if self._pairer else None,
            max_rate_hz=max_rate,
            busy_for_s=stats.busy_for_s, last_error=stats.last_error or '',
            last_reject=self._last_reject, last_jump=self._last_jump,
            sync=params.sync if params else 'exact',
            transport=params.input_transport if params else 'raw',
            camera_timeout_s=params.camera_timeout_s if params else 0.0,
            left_out=self._pairer.left_out if self._pairer else ())
        level, message = assess(facts)
        # sync exact: a dropped or rate-limited group drops one frame of every camera.
        group_drops = (stats.dropped + counts.get('rate_limited', 0)
                       + counts.get('decode_dropped_groups', 0)
                       if params is not None and params.sync == 'exact' else 0)

        def ms(value: Optional[float]) -> str:
            return 'n/a' if value is None else f'{value:.1f}'

        def rate(key: str) -> str:
            return f'{delta.get(key, 0) / window_s:.2f}'

        images_in = sum(v for k, v in delta.items() if k.endswith('_images'))
        values = {
            'state': self._state,
            'model': params.model if params else self.get_parameter('model').value,
            'device': self._device,
            'precision': params.precision if params else '',
            'backend': str(getattr(self._seg, 'backend', params.backend if params else '')),
            'cameras': ','.join(params.cameras) if params else '',
            'sync': params.sync if params else '',
            'input_transport': params.input_transport if params else '',
            'label_space': outputs_space(self._outputs),
            'input_reliability': inputs.summary() if inputs else '',
            'window_s': f'{window_s:.1f}',
            'input_images_hz': f'{images_in / window_s:.2f}',
            'input_pairs_hz': rate('pairs'),
            'output_hz': rate('published_pairs'),
            'latency_p50_ms': ms(self._latency.percentile(50)),
            'latency_p95_ms': ms(self._latency.percentile(95)),
            'node_latency_p50_ms': ms(self._node_latency.percentile(50)),
            'node_latency_p95_ms': ms(self._node_latency.percentile(95)),
            'inference_p50_ms': ms(stats.inference_p50_ms),
            'inference_p95_ms': ms(stats.inference_p95_ms),
            'submitted_pairs': str(stats.submitted),
            'processed_pairs': str(stats.processed),
            'published_pairs': str(counts.get('published_pairs', 0)),
            'dropped_pairs': str(stats.dropped),
            'failed_pairs': str(stats.failed),
            'decode_p50_ms': ms(self.decode_ms(50)),
            'decode_p95_ms': ms(self.decode_ms(95)),
            **counter_values(counts),
            **camera_values(cameras, counts, delta, window_s, group_drops),
            'last_time_jump': self._last_jump,
            'points_p50_ms': ms(points.ms.percentile(50) if points else None),
            'points_published': str(self.published.get('semantic/points', 0)),
            'last_rejected': self._last_reject,
            'last_error': self._error or stats.last_error or '',
        }
        return DiagnosticStatus(
            level=bytes([level]), name=f'{self.get_fully_qualified_name()}: semantic '
            'segmentation', message=message, hardware_id=self._device,
            values=[KeyValue(key=k, value=v) for k, v in values.items()])

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray on /diagnostics (the 1 Hz steady timer calls this)."""
        try:
            array = DiagnosticArray()
            array.header.stamp = self.get_clock().now().to_msg()
            array.status = [self.diagnostics()]
            self._diag_pub.publish(array)
        except Exception as exc:  # noqa: B902 -- a bug here must not end the node
            self._internal_error('/diagnostics', exc)


def outputs_space(outputs: Optional[LabelOutputs]) -> str:
    """Return the label space's name for diagnostics ('' before configure)."""
    return outputs.space.name if outputs is not None else ''


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
        # One executor thread is enough: callbacks only check, decode raw images without
        # copies and hand over (compressed decoding and inference have threads of their own).
        # rclpy's MultiThreadedExecutor polls its futures in Python while messages stream in
        # and holds the GIL most of the time, which starved the inference thread's many small
        # torch calls (a 30 Hz stereo stream made a 45 ms pair take ~500 ms).
        executor = SingleThreadedExecutor()
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
