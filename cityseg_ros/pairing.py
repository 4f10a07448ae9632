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

"""Match messages of several streams (left, right, ground truth, ...) by their header stamp.

One pairer serves the live node (callbacks push as messages arrive, possibly from several
executor threads) and the bag reader (messages pushed in log-time order). It is pure Python and
holds at most ``max_pending`` items per key, so a stream whose partner never comes cannot grow
memory.

Rules, in the order :meth:`StampPairer.push` applies them:

1. An item of key ``k`` whose stamp is not newer than the last matched stamp of ``k``, or older
   than the newest matched reference stamp minus the tolerance, is *late*: it can no longer be
   part of a set that is delivered in order. It is dropped and counted.
2. Otherwise it is queued (kept sorted by stamp, so out-of-order arrival is fine). If the queue
   of ``k`` then holds more than ``max_pending`` items, the oldest is dropped and counted.
3. The pushed item is the anchor: for every other key the pending item with the nearest stamp
   within ``tolerance_ns`` of the anchor's is looked up. If every key has one, the set is
   matched, removed, and every pending item older than its key's matched item is dropped and
   counted (its partners were skipped, so it can never be matched in order). A push may name
   the keys ``required`` for this match (a subset holding the pushed key): the live node leaves
   a camera that stopped sending out, so the others are not held hostage by it.

Like ``message_filters.ApproximateTime`` but with a fixed tolerance instead of an adaptive
window, which is what a hardware-synchronised stereo pair and a dataset bag need.

Time is not monotonic (a bag played with ``--loop``, a simulator reset, a driver clock that
sends one stamp far in the future). With ``jump_ns`` set (the live node sets it) the pairer
recovers by itself instead of calling everything after such a stamp *late* for good:

4. A late item more than ``jump_ns`` behind the stamp that made it late, or the
   ``late_streak``-th late item in a row (no item of any key in time between them; default
   one more than the number of keys, so one late frame per camera is still just late, as
   threads decoding in parallel may push them), is a *jump back*: every pending item is
   dropped (counted), the late watermarks are forgotten, and the item is queued as in rule 2.
5. At a match, pending items more than ``jump_ns`` newer than the matched set are dropped as
   *future* (one bogus stamp must not sit in the queue for good), and a matched stamp more
   than ``jump_ns`` and ten typical frame gaps (ten ``jump_ns`` until the gap is known) after
   the previous one is counted as a *jump forward* (nothing to recover: newer stamps match).
"""

import bisect
from collections import deque
from dataclasses import dataclass, field
import statistics
import threading
from typing import Any, Deque, Optional, Sequence

__all__ = ['Matched', 'PairingStats', 'StampPairer', 'TimeJump']

#: A forward gap counts as a jump only when it is this many typical gaps long too, so a slow
#: camera (0.5 Hz) is not reported as jumping at every frame.
FORWARD_GAP_FACTOR = 10
#: Recent gaps between matched stamps kept for the typical gap (bounded).
_GAP_HISTORY = 16


@dataclass(frozen=True)
class Matched:
    """One matched set.

    Attributes:
        stamp_ns: the stamp of the first key's item (the reference stream, e.g. the left image;
            the first key present when some were not required), nanoseconds.
        items: key -> the item pushed with that key (every required key).
        stamps: key -> the stamp that item was pushed with (they differ by at most the
            tolerance from the anchor).
    """

    stamp_ns: int
    items: dict[str, Any]
    stamps: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TimeJump:
    """A jump of the stamps seen by a :class:`StampPairer`.

    Attributes:
        key: the stream whose item showed the jump.
        from_ns: the stamp before the jump (the watermark it fell behind, or the previous
            matched stamp), nanoseconds.
        to_ns: the stamp after it, nanoseconds.
    """

    key: str
    from_ns: int
    to_ns: int

    @property
    def delta_ns(self) -> int:
        """Signed size of the jump (negative: back in time), nanoseconds."""
        return self.to_ns - self.from_ns

    def describe(self) -> str:
        """Say what happened in a few words, e.g. 'left stamps jumped back 35.000 s'."""
        if self.delta_ns == 0:  # a driver that does not advance its stamps (counted as back)
            return f'{self.key} repeated the stamp {self.to_ns} ns'
        direction = 'back' if self.delta_ns < 0 else 'forward'
        return f'{self.key} stamps jumped {direction} {abs(self.delta_ns) / 1e9:.3f} s'


@dataclass(frozen=True)
class PairingStats:
    """Counters of a :class:`StampPairer`; a snapshot, safe to keep.

    ``dropped_unmatched[k]`` counts every item of key ``k`` that left the pairer without being
    matched, whatever the reason; ``dropped_late``, ``dropped_overflow`` and ``dropped_future``
    break reasons out of it (the rest were passed by a newer match or cleared by a jump back).
    ``pending`` is what waits now. ``jumps_back``/``jumps_forward`` count time jumps (only with
    ``jump_ns``); ``last_jump`` is the latest of either.
    """

    matched: int
    dropped_unmatched: dict[str, int]
    dropped_late: dict[str, int]
    dropped_overflow: dict[str, int]
    pending: dict[str, int]
    dropped_future: dict[str, int] = field(default_factory=dict)
    jumps_back: int = 0
    jumps_forward: int = 0
    last_jump: Optional[TimeJump] = None

    @property
    def dropped(self) -> int:
        """Items dropped over all keys."""
        return sum(self.dropped_unmatched.values())


class StampPairer:
    """Thread-safe, bounded matcher of messages from several keyed streams by stamp."""

    def __init__(self, keys: Sequence[str], tolerance_ns: int, max_pending: int = 8,
                 jump_ns: Optional[int] = None, late_streak: Optional[int] = None) -> None:
        """Create a pairer.

        Args:
            keys: the stream names, unique, at least one; the first is the reference whose
                stamp a :class:`Matched` carries.
            tolerance_ns: largest stamp difference (ns, >= 0) between the pushed item and each
                partner.
            max_pending: items kept per key while waiting for partners (>= 1).
            jump_ns: recover from time jumps (rules 4 and 5) larger than this, ns (> 0); None
                (default) never resets, as a bag read in log-time order wants.
            late_streak: with ``jump_ns``, this many late items in a row (any keys) are a
                jump back too, however small (>= 1); default ``len(keys) + 1``.

        Raises:
            ValueError: on an empty or duplicate key list, a negative tolerance,
                ``max_pending < 1``, ``jump_ns <= 0`` or ``late_streak < 1``.
        """
        keys = tuple(keys)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f'keys must be unique and not empty, got {keys!r}')
        if tolerance_ns < 0:
            raise ValueError(f'tolerance_ns must be >= 0, got {tolerance_ns}')
        if max_pending < 1:
            raise ValueError(f'max_pending must be >= 1, got {max_pending}')
        if jump_ns is not None and jump_ns <= 0:
            raise ValueError(f'jump_ns must be > 0 or None, got {jump_ns}')
        late_streak = len(keys) + 1 if late_streak is None else late_streak
        if late_streak < 1:
            raise ValueError(f'late_streak must be >= 1, got {late_streak}')
        self._keys = keys
        self._tolerance = int(tolerance_ns)
        self._max_pending = int(max_pending)
        self._lock = threading.Lock()
        # Per key: sorted stamps and the items in the same order (parallel lists, for bisect).
        self._stamps: dict[str, list[int]] = {k: [] for k in keys}
        self._items: dict[str, list[Any]] = {k: [] for k in keys}
        self._last_matched: dict[str, Optional[int]] = dict.fromkeys(keys)
        self._last_reference: Optional[int] = None
        self._matched = 0
        self._dropped = dict.fromkeys(keys, 0)
        self._late = dict.fromkeys(keys, 0)
        self._overflow = dict.fromkeys(keys, 0)
        self._jump_ns = None if jump_ns is None else int(jump_ns)
        self._late_streak = int(late_streak)
        self._streak = 0  # late pushes in a row, any key
        self._future = dict.fromkeys(keys, 0)
        self._jumps_back = 0
        self._jumps_forward = 0
        self._last_jump: Optional[TimeJump] = None
        self._gaps: Deque[int] = deque(maxlen=_GAP_HISTORY)

    @property
    def keys(self) -> tuple[str, ...]:
        """The stream names, reference first."""
        return self._keys

    @property
    def tolerance_ns(self) -> int:
        """Largest stamp difference accepted between partners, nanoseconds."""
        return self._tolerance

    def push(self, key: str, stamp_ns: int, item: Any,
             required: Optional[Sequence[str]] = None) -> Optional[Matched]:
        """Add one message; return the matched set when every key has a partner for it.

        Args:
            key: one of :attr:`keys`.
            stamp_ns: the message's header stamp, nanoseconds.
            item: anything; handed back in :attr:`Matched.items`.
            required: the keys a match needs this time (default: all); it must hold ``key``.
                A set matched without some keys holds only the others.

        Returns:
            The matched set, or None while partners are missing (or the item was dropped).

        Raises:
            KeyError: ``key`` (or a required key) is not one of the pairer's keys, or
                ``required`` leaves ``key`` out.
        """
        if key not in self._stamps:
            raise KeyError(f'unknown key {key!r}; this pairer matches {list(self._keys)}')
        if required is None:
            wanted = self._keys
        else:
            named = set(required)
            wanted = tuple(k for k in self._keys if k in named)
            if key not in wanted or len(wanted) != len(named):
                raise KeyError(f'required keys {list(required)} must be keys of this pairer '
                               f'({list(self._keys)}) and hold {key!r}')
        stamp_ns = int(stamp_ns)
        with self._lock:
            watermark = self._late_watermark(key, stamp_ns)
            if watermark is not None:
                if not self._jumped_back(key, stamp_ns, watermark):
                    self._late[key] += 1
                    self._dropped[key] += 1
                    self._streak += 1
                    return None
                self._reset_after_jump(TimeJump(key, watermark, stamp_ns))
            self._streak = 0
            stamps, items = self._stamps[key], self._items[key]
            index = bisect.bisect_right(stamps, stamp_ns)
            stamps.insert(index, stamp_ns)
            items.insert(index, item)
            if len(stamps) > self._max_pending:
                del stamps[0], items[0]
                self._overflow[key] += 1
                self._dropped[key] += 1
                if index == 0:  # the new item itself was the oldest: it cannot match in order
                    return None
            return self._match(key, stamp_ns, wanted)

    def clear(self) -> None:
        """Forget pending items and matched stamps (not counted as drops); counters stay.

        Call it when time jumps back (a bag played in a loop, a simulator reset): otherwise
        every new message is older than the last match and is dropped as late.
        """
        with self._lock:
            for key in self._keys:
                self._stamps[key].clear()
                self._items[key].clear()
                self._last_matched[key] = None
            self._streak = 0
            self._last_reference = None
            self._gaps.clear()

    @property
    def stats(self) -> PairingStats:
        """A snapshot of the counters."""
        with self._lock:
            return PairingStats(
                matched=self._matched,
                dropped_unmatched=dict(self._dropped),
                dropped_late=dict(self._late),
                dropped_overflow=dict(self._overflow),
                pending={k: len(v) for k, v in self._stamps.items()},
                dropped_future=dict(self._future),
                jumps_back=self._jumps_back,
                jumps_forward=self._jumps_forward,
                last_jump=self._last_jump,
            )

    def _late_watermark(self, key: str, stamp_ns: int) -> Optional[int]:
        """Return the stamp that ``stamp_ns`` falls behind (rule 1), or None if not late."""
        last = self._last_matched[key]
        if last is not None and stamp_ns <= last:
            return last
        if (self._last_reference is not None
                and stamp_ns < self._last_reference - self._tolerance):
            return self._last_reference
        return None

    def _jumped_back(self, key: str, stamp_ns: int, watermark: int) -> bool:
        if self._jump_ns is None:
            return False
        return (watermark - stamp_ns > self._jump_ns
                or self._streak + 1 >= self._late_streak)

    def _reset_after_jump(self, jump: TimeJump) -> None:
        """Rule 4: forget the old timeline; what waited is dropped and counted."""
        for key in self._keys:
            self._dropped[key] += len(self._stamps[key])
            self._stamps[key].clear()
            self._items[key].clear()
            self._last_matched[key] = None
        self._streak = 0
        self._last_reference = None
        self._jumps_back += 1
        self._last_jump = jump

    def _after_match(self, reference: int) -> None:
        """Rule 5: drop far-future pending items; count a forward jump of the matched stamps."""
        horizon = reference + self._jump_ns
        for key in self._keys:
            stamps = self._stamps[key]
            index = bisect.bisect_right(stamps, horizon)
            if index < len(stamps):
                count = len(stamps) - index
                self._future[key] += count
                self._dropped[key] += count
                del stamps[index:], self._items[key][index:]
        previous = self._last_reference
        if previous is None or reference <= previous:
            return
        gap = reference - previous
        # Until a few gaps are known, only a gap of ten jump_ns counts.
        typical = statistics.median(self._gaps) if len(self._gaps) >= 3 else self._jump_ns
        if gap > self._jump_ns and gap > FORWARD_GAP_FACTOR * typical:
            self._jumps_forward += 1
            self._last_jump = TimeJump(self._keys[0], previous, reference)
        else:
            self._gaps.append(gap)

    def _nearest(self, key: str, stamp_ns: int) -> Optional[int]:
        """Index of the pending item of ``key`` nearest to ``stamp_ns`` within tolerance."""
        stamps = self._stamps[key]
        index = bisect.bisect_left(stamps, stamp_ns)
        best, best_diff = None, self._tolerance + 1
        for candidate in (index - 1, index):
            if 0 <= candidate < len(stamps):
                diff = abs(stamps[candidate] - stamp_ns)
                if diff < best_diff:
                    best, best_diff = candidate, diff
        return best

    def _match(self, anchor_key: str, anchor_stamp: int,
               wanted: Sequence[str]) -> Optional[Matched]:
        chosen: dict[str, int] = {}
        for key in wanted:
            index = self._nearest(key, anchor_stamp)
            if index is None:
                return None
            chosen[key] = index
        items: dict[str, Any] = {}
        stamps: dict[str, int] = {}
        for key, index in chosen.items():
            stamps[key] = self._stamps[key][index]
            items[key] = self._items[key][index]
            # Everything older than the matched item, and the item itself, leaves the queue.
            self._dropped[key] += index
            del self._stamps[key][:index + 1], self._items[key][:index + 1]
            self._last_matched[key] = stamps[key]
        reference = stamps[wanted[0]]
        if self._jump_ns is not None:
            self._after_match(reference)
        self._last_reference = reference
        self._matched += 1
        return Matched(stamp_ns=reference, items=items, stamps=stamps)
