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

"""StampPairer: matching by stamp, drops and their counters, bounded memory, threads."""

import threading

from cityseg_ros.pairing import Matched, StampPairer
import pytest

MS = 1_000_000
PERIOD = 59 * MS  # 17 Hz


def test_exact_pair_is_matched_on_the_second_message():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    assert pairer.push('left', 1000, 'L') is None
    matched = pairer.push('right', 1000, 'R')
    assert matched == Matched(1000, {'left': 'L', 'right': 'R'}, {'left': 1000, 'right': 1000})
    stats = pairer.stats
    assert stats.matched == 1 and stats.dropped == 0
    assert stats.pending == {'left': 0, 'right': 0}


def test_jitter_within_tolerance_matches_and_carries_the_reference_stamp():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    assert pairer.push('right', 10 * MS + 4 * MS, 'R') is None
    matched = pairer.push('left', 10 * MS, 'L')
    assert matched is not None
    assert matched.stamp_ns == 10 * MS  # the first key's stamp, not the anchor's
    assert matched.stamps == {'left': 10 * MS, 'right': 14 * MS}


def test_tolerance_is_inclusive():
    pairer = StampPairer(['a', 'b'], tolerance_ns=5)
    pairer.push('a', 100, 1)
    assert pairer.push('b', 105, 2) is not None


def test_out_of_tolerance_is_not_matched_and_waits():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    pairer.push('left', 0, 'L0')
    assert pairer.push('right', 6 * MS, 'R') is None
    assert pairer.stats.pending == {'left': 1, 'right': 1}
    assert pairer.stats.matched == 0


def test_nearest_partner_is_chosen():
    pairer = StampPairer(['left', 'right'], tolerance_ns=10 * MS)
    pairer.push('right', 0, 'far')
    pairer.push('right', 7 * MS, 'near')
    matched = pairer.push('left', 8 * MS, 'L')
    assert matched.items['right'] == 'near'
    # The older right one was passed by the match: dropped and counted.
    assert pairer.stats.dropped_unmatched == {'left': 0, 'right': 1}


def test_right_frame_without_left_partner_is_dropped_and_counted():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    pairer.push('left', 0, 'L0')
    assert pairer.push('right', 0, 'R0') is not None
    assert pairer.push('right', PERIOD, 'R1') is None  # its left frame never comes
    pairer.push('left', 2 * PERIOD, 'L2')
    matched = pairer.push('right', 2 * PERIOD, 'R2')
    assert matched.items == {'left': 'L2', 'right': 'R2'}
    stats = pairer.stats
    assert stats.matched == 2
    assert stats.dropped_unmatched == {'left': 0, 'right': 1}
    assert stats.pending == {'left': 0, 'right': 0}


def test_out_of_order_arrival_within_the_queue():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    pairer.push('right', 2 * PERIOD, 'R2')
    pairer.push('right', PERIOD, 'R1')
    assert pairer.push('left', PERIOD, 'L1').items == {'left': 'L1', 'right': 'R1'}
    assert pairer.push('left', 2 * PERIOD, 'L2').items == {'left': 'L2', 'right': 'R2'}
    assert pairer.stats.dropped == 0


def test_late_partner_older_than_the_newest_match_is_dropped():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    pairer.push('left', PERIOD, 'L1')
    pairer.push('left', 2 * PERIOD, 'L2')
    assert pairer.push('right', 2 * PERIOD, 'R2') is not None  # L1 is passed over
    assert pairer.push('right', PERIOD, 'R1') is None  # too late for L1
    stats = pairer.stats
    assert stats.dropped_unmatched == {'left': 1, 'right': 1}
    assert stats.dropped_late == {'left': 0, 'right': 1}
    assert stats.pending == {'left': 0, 'right': 0}
    # A duplicate of an already matched stamp is late too.
    assert pairer.push('left', 2 * PERIOD, 'again') is None
    assert pairer.stats.dropped_late['left'] == 1


def test_flood_of_one_key_keeps_memory_bounded():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, max_pending=8)
    for i in range(1000):
        assert pairer.push('left', i * PERIOD, i) is None
    stats = pairer.stats
    assert stats.pending == {'left': 8, 'right': 0}
    assert stats.dropped_overflow == {'left': 992, 'right': 0}
    assert stats.dropped_unmatched['left'] == 992
    # The newest ones are the ones kept.
    assert pairer.push('right', 999 * PERIOD, 'R').items['left'] == 999
    assert pairer.stats.dropped_unmatched['left'] == 992 + 7


def test_overflowing_with_an_older_item_drops_that_item():
    pairer = StampPairer(['left', 'right'], tolerance_ns=0, max_pending=2)
    pairer.push('left', 10, 'a')
    pairer.push('left', 20, 'b')
    pairer.push('right', 5, 'old')
    pairer.push('right', 6, 'newer')
    assert pairer.push('right', 1, 'oldest') is None
    assert pairer.stats.dropped_overflow == {'left': 0, 'right': 1}
    assert pairer.stats.pending['right'] == 2


@pytest.mark.parametrize('order', [
    ('left', 'right', 'gt', 'inst'),
    ('inst', 'gt', 'right', 'left'),
    ('gt', 'left', 'inst', 'right'),
])
def test_four_keys_match_only_when_all_are_present(order):
    keys = ['left', 'right', 'gt', 'inst']
    jitter = {'left': 0, 'right': 2 * MS, 'gt': -1 * MS, 'inst': 3 * MS}
    pairer = StampPairer(keys, tolerance_ns=4 * MS)
    results = [pairer.push(k, PERIOD + jitter[k], k.upper()) for k in order]
    assert results[:3] == [None, None, None]
    assert results[3].items == {k: k.upper() for k in keys}
    assert results[3].stamp_ns == PERIOD
    assert pairer.stats.matched == 1


def test_three_keys_with_a_missing_gt_frame():
    pairer = StampPairer(['left', 'right', 'gt'], tolerance_ns=MS)
    frames = []
    for i in range(5):
        for key in ('left', 'right', 'gt'):
            if key == 'gt' and i == 2:
                continue
            matched = pairer.push(key, i * PERIOD, (key, i))
            if matched:
                frames.append(matched.items['left'][1])
    assert frames == [0, 1, 3, 4]
    assert pairer.stats.dropped_unmatched == {'left': 1, 'right': 1, 'gt': 0}


def test_single_key_matches_every_message():
    pairer = StampPairer(['left'], tolerance_ns=0)
    assert pairer.push('left', 7, 'x') == Matched(7, {'left': 'x'}, {'left': 7})


def test_clear_forgets_pending_and_the_late_watermark():
    pairer = StampPairer(['left', 'right'], tolerance_ns=MS)
    pairer.push('left', 10 * PERIOD, 'L')
    pairer.push('right', 10 * PERIOD, 'R')
    pairer.push('left', 11 * PERIOD, 'pending')
    pairer.clear()
    assert pairer.stats.pending == {'left': 0, 'right': 0}
    assert pairer.stats.matched == 1
    # Time jumped back (a bag played in a loop): old stamps match again.
    pairer.push('left', 0, 'L0')
    assert pairer.push('right', 0, 'R0') is not None


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match='unique'):
        StampPairer(['a', 'a'], tolerance_ns=0)
    with pytest.raises(ValueError, match='unique'):
        StampPairer([], tolerance_ns=0)
    with pytest.raises(ValueError, match='tolerance'):
        StampPairer(['a'], tolerance_ns=-1)
    with pytest.raises(ValueError, match='max_pending'):
        StampPairer(['a'], tolerance_ns=0, max_pending=0)
    with pytest.raises(KeyError, match='unknown key'):
        StampPairer(['a', 'b'], tolerance_ns=0).push('c', 0, None)


def test_concurrent_pushes_from_threads_match_every_frame():
    frames = 400
    pairer = StampPairer(['left', 'right'], tolerance_ns=MS, max_pending=frames)
    matched = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def feed(key):
        barrier.wait()
        for i in range(frames):
            result = pairer.push(key, i * PERIOD, i)
            if result is not None:
                with lock:
                    matched.append(result.items['left'])

    threads = [threading.Thread(target=feed, args=(k,)) for k in ('left', 'right')]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    stats = pairer.stats
    # Whatever the interleaving, every frame is matched once or dropped, never both.
    assert stats.matched == len(matched)
    assert stats.matched + stats.dropped_unmatched['left'] + stats.pending['left'] == frames
    assert stats.matched + stats.dropped_unmatched['right'] + stats.pending['right'] == frames
    assert matched == sorted(matched) and len(set(matched)) == len(matched)
    # Each thread pushes in stamp order, so no interleaving can pass a frame over.
    assert stats.matched == frames


# -- time jumps (jump_ns set, as the live node does) ------------------------------------------

S = 1_000_000_000


def _stream(pairer, stamps, keys=('left', 'right')):
    """Push one item per key for each stamp; return the stamps that were matched."""
    out = []
    for stamp in stamps:
        for key in keys:
            matched = pairer.push(key, stamp, (key, stamp))
            if matched is not None:
                out.append(matched.stamp_ns)
    return out


def test_without_jump_recovery_one_future_pair_stalls_the_pairer():
    """The bug the node had: after one pair stamped far ahead, every later pair is late."""
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS)
    base = 100 * S
    assert _stream(pairer, [base, base + 3600 * S]) == [base, base + 3600 * S]
    assert _stream(pairer, [base + i * PERIOD for i in range(1, 20)]) == []


def test_one_pair_stamped_far_in_the_future_does_not_poison_the_pairer():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    base = 100 * S
    future = base + 3600 * S
    assert _stream(pairer, [base, future]) == [base, future]
    later = [base + i * PERIOD for i in range(1, 6)]
    assert _stream(pairer, later) == later  # the very next pair matches again
    stats = pairer.stats
    assert stats.jumps_forward == 1 and stats.jumps_back == 1
    assert stats.last_jump.key == 'left' and stats.last_jump.delta_ns == later[0] - future
    assert stats.last_jump.describe() == 'left stamps jumped back 3599.941 s'


def test_a_repeated_stamp_is_described_as_repeated_not_as_a_jump_forward():
    # A driver that never advances its stamp: the reset counts as a jump back, so the words
    # must not say 'jumped forward 0.000 s'.
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    stamp = 100 * S
    assert _stream(pairer, [stamp] * 3) == [stamp, stamp]  # every other pair, after a reset
    stats = pairer.stats
    assert stats.jumps_back == 1 and stats.jumps_forward == 0
    assert stats.last_jump.describe() == f'left repeated the stamp {stamp} ns'


@pytest.mark.parametrize('back_s', [30.0, 0.5])
def test_bag_loop_or_small_step_back_resumes_within_two_pairs(back_s):
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    base = 1000 * S
    first = [base + i * PERIOD for i in range(20)]
    assert _stream(pairer, first) == first
    restart = first[-1] - int(back_s * S)
    again = [restart + i * PERIOD for i in range(1, 6)]
    matched = _stream(pairer, again)
    # A big step back recovers at the first pair; a small one at the second (late streak).
    assert matched == again[(0 if back_s > 1 else 1):]
    assert pairer.stats.jumps_back == 1
    assert pairer.stats.pending == {'left': 0, 'right': 0}


def test_a_single_late_straggler_is_still_just_late():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    assert _stream(pairer, [10 * PERIOD, 11 * PERIOD]) == [10 * PERIOD, 11 * PERIOD]
    assert pairer.push('left', 9 * PERIOD, 'straggler') is None
    assert _stream(pairer, [12 * PERIOD]) == [12 * PERIOD]
    stats = pairer.stats
    assert stats.jumps_back == 0 and stats.dropped_late == {'left': 1, 'right': 0}


def test_single_camera_recovers_from_a_jump_back():
    pairer = StampPairer(['left'], tolerance_ns=0, jump_ns=S)
    assert _stream(pairer, [50 * S, 51 * S], keys=('left',)) == [50 * S, 51 * S]
    assert _stream(pairer, [S, 2 * S], keys=('left',)) == [S, 2 * S]
    assert pairer.stats.jumps_back == 1


def test_a_lone_future_item_is_purged_at_the_next_match():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    pairer.push('left', 10_000 * S, 'bogus')
    assert _stream(pairer, [PERIOD, 2 * PERIOD]) == [PERIOD, 2 * PERIOD]
    stats = pairer.stats
    assert stats.pending == {'left': 0, 'right': 0}
    assert stats.dropped_future == {'left': 1, 'right': 0}
    assert stats.dropped_unmatched == {'left': 1, 'right': 0}


def test_slow_camera_gaps_are_not_forward_jumps_but_a_real_jump_is():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    slow = [i * 2 * S for i in range(10)]  # 0.5 Hz: every gap is above jump_ns
    assert _stream(pairer, slow) == slow
    assert pairer.stats.jumps_forward == 0
    assert _stream(pairer, [slow[-1] + 600 * S]) == [slow[-1] + 600 * S]
    assert pairer.stats.jumps_forward == 1
    assert pairer.stats.last_jump.describe() == 'left stamps jumped forward 600.000 s'


def test_jump_arguments_are_checked():
    with pytest.raises(ValueError, match='jump_ns'):
        StampPairer(['a'], tolerance_ns=0, jump_ns=0)
    with pytest.raises(ValueError, match='late_streak'):
        StampPairer(['a'], tolerance_ns=0, jump_ns=S, late_streak=0)


def test_one_late_frame_per_camera_from_parallel_decoding_is_no_jump():
    pairer = StampPairer(['left', 'right'], tolerance_ns=5 * MS, jump_ns=S)
    assert _stream(pairer, [10 * PERIOD, 11 * PERIOD]) == [10 * PERIOD, 11 * PERIOD]
    # Both cameras' frame 9 is pushed after frame 11 matched (threads racing): just late.
    assert pairer.push('left', 9 * PERIOD, 'l9') is None
    assert pairer.push('right', 9 * PERIOD, 'r9') is None
    assert _stream(pairer, [12 * PERIOD]) == [12 * PERIOD]
    assert pairer.stats.jumps_back == 0
    assert pairer.stats.dropped_late == {'left': 1, 'right': 1}


# -- required keys: a stream that stopped is left out -------------------------------------------

def test_required_keys_match_without_the_others_and_the_reference_is_the_first_present():
    pairer = StampPairer(['left', 'right', 'rear'], tolerance_ns=0)
    assert pairer.push('right', 10, 'r10', required=['right', 'rear']) is None
    matched = pairer.push('rear', 10, 'b10', required=['rear', 'right'])
    assert matched.items == {'right': 'r10', 'rear': 'b10'}
    assert matched.stamp_ns == 10 and set(matched.stamps) == {'right', 'rear'}
    alone = pairer.push('left', 20, 'l20', required=['left'])
    assert alone.items == {'left': 'l20'} and alone.stamp_ns == 20
    # All required again: the late right frame of stamp 10 is dropped, 30 needs all three.
    assert pairer.push('left', 30, 'l30') is None
    assert pairer.push('right', 30, 'r30') is None
    assert pairer.push('rear', 30, 'b30').items == {'left': 'l30', 'right': 'r30', 'rear': 'b30'}


@pytest.mark.parametrize('required', [['left'], ['right', 'nope'], []])
def test_required_keys_must_hold_the_pushed_key_and_only_known_keys(required):
    pairer = StampPairer(['left', 'right'], tolerance_ns=0)
    with pytest.raises(KeyError):
        pairer.push('right', 10, 'r', required=required)
