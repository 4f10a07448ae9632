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
   counted (its partners were skipped, so it can never be matched in order).

Like ``message_filters.ApproximateTime`` but with a fixed tolerance instead of an adaptive
window, which is what a hardware-synchronised stereo pair and a dataset bag need.
"""

import bisect
from dataclasses import dataclass, field
import threading
from typing import Any, Optional, Sequence

__all__ = ['Matched', 'PairingStats', 'StampPairer']


@dataclass(frozen=True)
class Matched:
    """One matched set.

    Attributes:
        stamp_ns: the stamp of the first key's item (the reference stream, e.g. the left image),
            nanoseconds.
        items: key -> the item pushed with that key.
        stamps: key -> the stamp that item was pushed with (they differ by at most the
            tolerance from the anchor).
    """

    stamp_ns: int
    items: dict[str, Any]
    stamps: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PairingStats:
    """Counters of a :class:`StampPairer`; a snapshot, safe to keep.

    ``dropped_unmatched[k]`` counts every item of key ``k`` that left the pairer without being
    matched, whatever the reason; ``dropped_late`` and ``dropped_overflow`` break two reasons out
    of it (the rest were passed by a newer match). ``pending`` is what waits now.
    """

    matched: int
    dropped_unmatched: dict[str, int]
    dropped_late: dict[str, int]
    dropped_overflow: dict[str, int]
    pending: dict[str, int]

    @property
    def dropped(self) -> int:
        """Items dropped over all keys."""
        return sum(self.dropped_unmatched.values())


class StampPairer:
    """Thread-safe, bounded matcher of messages from several keyed streams by stamp."""

    def __init__(self, keys: Sequence[str], tolerance_ns: int, max_pending: int = 8) -> None:
        """Create a pairer.

        Args:
            keys: the stream names, unique, at least one; the first is the reference whose
                stamp a :class:`Matched` carries.
            tolerance_ns: largest stamp difference (ns, >= 0) between the pushed item and each
                partner.
            max_pending: items kept per key while waiting for partners (>= 1).

        Raises:
            ValueError: on an empty or duplicate key list, a negative tolerance or
                ``max_pending < 1``.
        """
        keys = tuple(keys)
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f'keys must be unique and not empty, got {keys!r}')
        if tolerance_ns < 0:
            raise ValueError(f'tolerance_ns must be >= 0, got {tolerance_ns}')
        if max_pending < 1:
            raise ValueError(f'max_pending must be >= 1, got {max_pending}')
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

    @property
    def keys(self) -> tuple[str, ...]:
        """The stream names, reference first."""
        return self._keys

    @property
    def tolerance_ns(self) -> int:
        """Largest stamp difference accepted between partners, nanoseconds."""
        return self._tolerance

    def push(self, key: str, stamp_ns: int, item: Any) -> Optional[Matched]:
        """Add one message; return the matched set when every key has a partner for it.

        Args:
            key: one of :attr:`keys`.
            stamp_ns: the message's header stamp, nanoseconds.
            item: anything; handed back in :attr:`Matched.items`.

        Returns:
            The matched set, or None while partners are missing (or the item was dropped).

        Raises:
            KeyError: ``key`` is not one of the pairer's keys.
        """
        if key not in self._stamps:
            raise KeyError(f'unknown key {key!r}; this pairer matches {list(self._keys)}')
        stamp_ns = int(stamp_ns)
        with self._lock:
            if self._is_late(key, stamp_ns):
                self._late[key] += 1
                self._dropped[key] += 1
                return None
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
            return self._match(key, stamp_ns)

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
            self._last_reference = None

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
            )

    def _is_late(self, key: str, stamp_ns: int) -> bool:
        last = self._last_matched[key]
        if last is not None and stamp_ns <= last:
            return True
        return (self._last_reference is not None
                and stamp_ns < self._last_reference - self._tolerance)

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

    def _match(self, anchor_key: str, anchor_stamp: int) -> Optional[Matched]:
        chosen: dict[str, int] = {}
        for key in self._keys:
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
        reference = stamps[self._keys[0]]
        self._last_reference = reference
        self._matched += 1
        return Matched(stamp_ns=reference, items=items, stamps=stamps)
