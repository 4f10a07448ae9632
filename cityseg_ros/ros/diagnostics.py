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

"""The node's health in one level and one sentence, from counters over a recent window.

DESIGN.md: "/diagnostics never says OK while input arrives and nothing comes out". The node
hands cumulative counters to a :class:`CounterWindow` at every report; :func:`assess` compares
what came in with what went out over the last few seconds and, when nothing went out, says why
in the order a user would look: a camera that sends nothing (with ``sync: exact`` it stalls
every group until ``camera_timeout_s``; then, and with ``sync: none``, the others flow and it
is named as a warning), inputs all
rejected, no partner within the tolerance, loss in transport, the rate limit, nobody
subscribing, the model failing or still busy. Per camera it reports input and output rates and
drops, so a starving camera shows. Pure functions and plain data, so every rule is tested
without spinning.
"""

from collections import deque
from dataclasses import dataclass, field
import threading
from typing import Deque, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['CounterWindow', 'Facts', 'assess', 'OK', 'WARN', 'ERROR', 'WINDOW_S',
           'counter_values', 'camera_values', 'describe_clock_jump', 'REJECT_KINDS',
           'LARGE_IMAGE_HINT', 'clip_text', 'MAX_TEXT']

# diagnostic_msgs/DiagnosticStatus levels (bytes there; ints here, no message import).
OK, WARN, ERROR = 0, 1, 2
#: Shortest window the judgement looks back over, seconds; longer for slow models and rates.
WINDOW_S = 3.0
#: Longest window, seconds (a model that needs longer per pair is reported as busy).
MAX_WINDOW_S = 60.0
#: Reasons an input is refused; each is a ``rejected_<kind>`` counter and diagnostics key.
REJECT_KINDS = ('bad_image', 'bad_format', 'too_small', 'too_large', 'bad_stamp',
                'camera_info')
#: What helps best-effort large images. Fast DDS's LARGE_DATA alone lost 12 of 12 2-megapixel
#: frames between processes here; the repo's profile (a 64 MB shared-memory segment) none.
LARGE_IMAGE_HINT = ('make the camera publish reliable (input_reliability auto follows it), give '
                    "the camera's and the node's process the Fast DDS large-image profile "
                    '(FASTRTPS_DEFAULT_PROFILES_FILE=config/fastdds_large_images.xml, as '
                    'scripts/env.sh sets), or send compressed images')
#: Longest text from a message (an encoding, a format, a frame_id, and the reasons that quote
#: them) that goes into one log line or diagnostics value; a 1 MB frame_id was a 1 MB line.
MAX_TEXT = 1000
# Diagnostics key -> node counter, for the plain counts.
_COUNTER_KEYS = (
    ('rate_limited_pairs', 'rate_limited'), ('rejected_messages', 'rejected'),
    *((f'rejected_{kind}', f'rejected_{kind}') for kind in REJECT_KINDS),
    ('unpaired_images', 'unpaired'), ('partial_groups', 'partial_groups'),
    ('dds_lost_samples', 'dds_lost_samples'),
    ('skipped_no_subscribers', 'skipped_no_subscribers'),
    ('incompatible_qos_events', 'incompatible_qos'), ('qos_changes', 'qos_changes'),
    ('frame_id_changes', 'frame_id_changes'), ('time_jumps_back', 'time_jumps_back'),
    ('time_jumps_forward', 'time_jumps_forward'), ('clock_jumps', 'clock_jumps'),
    ('latency_excluded', 'latency_excluded'), ('points_skipped', 'points_skipped'),
    ('points_failed', 'points_failed'), ('camera_info_missing', 'camera_info_missing'),
    ('internal_errors', 'internal_errors'),
)


class CounterWindow:
    """Cumulative counters sampled over time; deltas over the last ``seconds``.

    Args:
        start: the time (monotonic s) the counters were all zero.
        maxlen: samples kept (reports come about once a second): memory stays bounded.
    """

    def __init__(self, start: float, maxlen: int = 128) -> None:
        self._samples: Deque[Tuple[float, Dict[str, int]]] = deque([(start, {})], maxlen=maxlen)
        self._lock = threading.Lock()  # the diagnostics timer and direct callers

    def add(self, now: float, counts: Mapping[str, int],
            seconds: float = WINDOW_S) -> Tuple[float, Dict[str, int]]:
        """Record ``counts`` at ``now``; return (seconds covered, counts minus those then).

        The base is the newest sample at least ``seconds`` old (or the oldest there is), so
        the deltas cover at least ``seconds`` once the node has run that long.
        """
        counts = dict(counts)
        with self._lock:
            base_t, base = self._samples[0]
            for t, sample in self._samples:
                if now - t >= seconds:
                    base_t, base = t, sample
                else:
                    break
            while self._samples and self._samples[0][0] < base_t:
                self._samples.popleft()
            self._samples.append((now, counts))
        # Counters restart at a new configure (a new pairer): never report negative deltas.
        delta = {k: max(v - base.get(k, 0), 0) for k, v in counts.items()}
        return max(now - base_t, 1e-3), delta


@dataclass(frozen=True)
class Facts:
    """What :func:`assess` judges; ``delta`` holds counter increases over ``window_s``.

    Counter keys: ``C_images``, ``C_lost`` and ``C_segmented`` per input camera ``C``,
    ``pairs``, ``unpaired``, ``rejected``, ``rate_limited``, ``submitted``, ``published_pairs``,
    ``failed``, ``skipped_no_subscribers``, ``incompatible_qos``, ``dds_lost_samples``,
    ``time_jumps``, ``points_failed``, ``points_skipped``.
    """

    state: str
    cameras: Sequence[str]
    window_s: float
    delta: Mapping[str, int]
    error: Optional[str] = None
    publishers: Mapping[str, int] = field(default_factory=dict)
    reliability: Mapping[str, str] = field(default_factory=dict)
    images_ever: int = 0
    tolerance_ms: float = 0.0
    stamp_gap_ms: Optional[float] = None
    max_rate_hz: float = 0.0
    busy_for_s: Optional[float] = None
    last_error: str = ''
    last_reject: str = ''
    last_jump: str = ''
    sync: str = 'exact'
    transport: str = 'raw'
    camera_timeout_s: float = 0.0
    left_out: Sequence[str] = ()


def clip_text(text: str, limit: int = MAX_TEXT) -> str:
    """Shorten ``text`` to about ``limit`` characters, keeping its start and its end.

    The end of a reason usually says what to do (the accepted encodings, the fix), so the cut
    is made in the middle and says how much went.
    """
    text = str(text)
    if len(text) <= limit:
        return text
    head, tail = text[:limit * 2 // 3], text[-(limit // 3):]
    return f'{head} ...[{len(text) - len(head) - len(tail)} characters cut]... {tail}'


def counter_values(counts: Mapping[str, int]) -> Dict[str, str]:
    """Return the diagnostics values that are plain node counters (missing ones are 0)."""
    values = {key: str(counts.get(counter, 0)) for key, counter in _COUNTER_KEYS}
    values['lost_images'] = str(sum(v for k, v in counts.items() if k.endswith('_lost')))
    return values


def camera_values(cameras: Sequence[str], counts: Mapping[str, int], delta: Mapping[str, int],
                  window_s: float, group_drops: int = 0) -> Dict[str, str]:
    """Return the per-camera values: input and output rates, drops, frames without partner.

    Keys per camera ``C``: ``C/input_hz``, ``C/output_hz`` (frames segmented and published),
    ``C/dropped``, ``C/unpaired`` and ``C/left_out`` (groups formed without it; cumulative).

    ``C/dropped`` counts frames that arrived but were replaced by a newer one before their
    turn: in the decode stage (``C_decode_dropped``), while waiting for the batch (sync none,
    ``C_dropped``) or as part of a dropped or rate-limited group (sync exact, ``group_drops``,
    the same for every camera).
    """
    values = {}
    for cam in cameras:
        dropped = (counts.get(f'{cam}_decode_dropped', 0) + counts.get(f'{cam}_dropped', 0)
                   + group_drops)
        values.update({
            f'{cam}/input_hz': f'{delta.get(f"{cam}_images", 0) / window_s:.2f}',
            f'{cam}/output_hz': f'{delta.get(f"{cam}_segmented", 0) / window_s:.2f}',
            f'{cam}/dropped': str(dropped),
            f'{cam}/unpaired': str(counts.get(f'{cam}_unpaired', 0)),
            f'{cam}/left_out': str(counts.get(f'{cam}_left_out', 0)),
        })
    return values


def describe_clock_jump(change: str, delta_ns: int, now_ns: int) -> str:
    """Say what a ROS clock jump was, in a few words.

    Args:
        change: the rclpy ClockChange's name (``ROS_TIME_ACTIVATED``, ``..._DEACTIVATED``,
            ``ROS_TIME_NO_CHANGE``).
        delta_ns: the jump, ns (negative: back).
        now_ns: the clock after the jump, ns.
    """
    if change == 'ROS_TIME_ACTIVATED':
        return 'use_sim_time on: the ROS clock now follows /clock'
    if change == 'ROS_TIME_DEACTIVATED':
        return 'use_sim_time off: the ROS clock is the system clock again'
    if now_ns - delta_ns <= 0:  # from zero: the first /clock after use_sim_time went on
        return f'first /clock message: ROS time starts at {now_ns / 1e9:.3f} s'
    direction = 'back' if delta_ns < 0 else 'forward'
    return f'ROS clock jumped {direction} {abs(delta_ns) / 1e9:.3f} s'


def window_seconds(inference_p95_ms: Optional[float], max_rate_hz: float) -> float:
    """Window long enough for two outputs of a slow model or a low ``max_rate_hz``."""
    seconds = WINDOW_S
    if inference_p95_ms:
        seconds = max(seconds, 2.0 * inference_p95_ms / 1e3)
    if max_rate_hz > 0.0:
        seconds = max(seconds, 2.0 / max_rate_hz)
    return min(seconds, MAX_WINDOW_S)


def assess(facts: Facts) -> Tuple[int, str]:
    """Return (level, message) for the node's DiagnosticStatus."""
    if facts.error:
        return ERROR, facts.error
    if facts.state != 'active':
        return WARN, f'{facts.state}: not segmenting'
    d = facts.delta
    images = {cam: d.get(f'{cam}_images', 0) for cam in facts.cameras}
    total = sum(images.values())
    lost = sum(d.get(f'{cam}_lost', 0) for cam in facts.cameras)
    if total == 0:
        return _no_input(facts)
    published = d.get('published_pairs', 0)
    window = f'{facts.window_s:.0f} s'
    if published == 0:
        return WARN, (f'input arrives ({total} images in {window}) but nothing is published: '
                      f'{_why_nothing(facts, images, lost)}')
    rate = f'segmenting at {published / facts.window_s:.2f} Hz'
    notes = _degraded(facts, lost)
    if notes:
        return WARN, f'{rate}; ' + '; '.join(notes)
    return OK, rate


def _topic(cam: str, transport: str = 'raw') -> str:
    return f'{cam}/image_rect_color' + ('/compressed' if transport == 'compressed' else '')


def _loss_hint(facts: Facts, cams: Sequence[str]) -> str:
    best_effort = [c for c in cams if facts.reliability.get(c) == 'best_effort']
    if best_effort:
        return f'best_effort input loses large images in transport: {LARGE_IMAGE_HINT}'
    return ('the input queue overflows while the node is busy, or the transport drops '
            'frames: raise input_depth or lower the camera rate')


def _no_input(facts: Facts) -> Tuple[int, str]:
    d = facts.delta
    if d.get('incompatible_qos', 0):
        return WARN, ("no images: a publisher's QoS cannot reach the subscription (see the "
                      'log line); set input_reliability:=auto')
    silent = [c for c in facts.cameras if facts.publishers.get(c, 0) > 0]
    if silent:
        topics = ', '.join(_topic(c, facts.transport) for c in silent)
        return WARN, (f'no images arrive in {facts.window_s:.0f} s although {topics} '
                      f'{"has" if len(silent) == 1 else "have"} publishers: '
                      f'{_loss_hint(facts, silent)}')
    topics = ', '.join(_topic(c, facts.transport) for c in facts.cameras)
    if facts.images_ever:
        return WARN, f'images stopped: nothing on {topics} for {facts.window_s:.0f} s'
    return OK, f'waiting for images on {topics}'


def _why_nothing(facts: Facts, images: Mapping[str, int], lost: int) -> str:
    d = facts.delta
    silent = [c for c, n in images.items() if n == 0]
    if silent and facts.sync == 'exact':
        sending = ', '.join(f'{n} {c}' for c, n in images.items() if n)
        group = 'pair' if len(images) == 2 else 'stamp group'
        wait = (f'sync exact waits camera_timeout_s={facts.camera_timeout_s:g} s, then '
                'segments the others' if facts.camera_timeout_s > 0 else
                'sync exact with camera_timeout_s=0 waits for every camera')
        why = (f'no {" or ".join(silent)} images arrive ({sending}), so no {group} can form '
               f'(no partner; {wait}; sync:=none segments each camera as it comes)')
        if lost or any(facts.publishers.get(c, 0) for c in silent):
            why += f'; {_loss_hint(facts, silent)}'
        return why
    pairs, rejected = d.get('pairs', 0), d.get('rejected', 0)
    if rejected and not pairs:
        return f'every pair is rejected ({rejected} inputs), latest: {facts.last_reject}'
    if not pairs and facts.sync == 'none':
        return (f'none of {sum(images.values())} images reached the model yet (decoding, or '
                f'lost before the node: {lost})')
    if not pairs:  # every camera sends, nothing pairs
        gap = ('' if facts.stamp_gap_ms is None else
               f'; the latest stamps differ by {facts.stamp_gap_ms:.1f} ms')
        why = (f'no partner: none of {sum(images.values()) - rejected} images found a partner '
               f'within pair_tolerance_ms={facts.tolerance_ms:g}{gap}')
        if lost:
            why += f'; {lost} images lost before the node: {_loss_hint(facts, images)}'
        elif facts.stamp_gap_ms is not None and facts.stamp_gap_ms > facts.tolerance_ms:
            why += ('; synchronise the cameras (equal stamps) or raise pair_tolerance_ms')
        return why
    if pairs and d.get('rate_limited', 0) >= pairs:
        return f'rate limit: max_rate_hz={facts.max_rate_hz:g} skipped all {pairs} pairs'
    if d.get('skipped_no_subscribers', 0):
        return 'no subscribers: nobody subscribes to any output, so nothing is computed'
    if d.get('failed', 0):
        return f'segmentation failed {d["failed"]} times, latest: {facts.last_error}'
    if facts.busy_for_s is not None:
        return f'the model has been busy on one pair for {facts.busy_for_s:.1f} s'
    if rejected:
        return f'{rejected} inputs rejected, latest: {facts.last_reject}'
    return f'{pairs} pairs formed, none published yet'


def _degraded(facts: Facts, lost: int) -> List[str]:
    """Problems worth a WARN although output flows."""
    d = facts.delta
    notes = []
    if facts.left_out:  # sync exact: stopped for camera_timeout_s, the others flow
        notes.append(f'{", ".join(facts.left_out)} left out of the groups: no images for '
                     f'camera_timeout_s={facts.camera_timeout_s:g} s (the other cameras are '
                     'segmented)')
    silent = [c for c in facts.cameras
              if not d.get(f'{c}_images', 0) and c not in facts.left_out]
    if silent:  # sync none: the others flow
        notes.append(f'no images from {", ".join(silent)} for {facts.window_s:.0f} s (the '
                     'other cameras are segmented)')
    if d.get('failed', 0):
        notes.append(f'{d["failed"]} frame(s) failed, latest: {facts.last_error}')
    if d.get('rejected', 0):
        notes.append(f'{d["rejected"]} input(s) rejected, latest: {facts.last_reject}')
    if lost:
        notes.append(f'{lost} images lost before the node')
    if d.get('points_failed', 0):
        notes.append(f'semantic/points failed {d["points_failed"]} times (labels published)')
    if d.get('time_jumps', 0):
        notes.append(f'recovered from a time jump ({facts.last_jump})')
    return notes
