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

"""evaluate and evaluate merge on hostile input: one stderr line, exit 2, never a traceback.

Most cases run in-process (fast); the bombs and everything that could print more than our
line (logging, progress bars, OpenCV's own messages) run in one 4 GiB-limited child per
group, with file descriptor 2 captured, as a user sees it.
"""

import json
import os
import shutil
import struct
import zipfile

from cityseg_ros.bags import BagWriter, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS
from cityseg_ros.labels import ID_TO_TRAINID
from cityseg_ros.tools import evaluate
import cv2
from hostile import (GIB, mcap_chunk, mcap_message, run_child, STAMP, write_mcap, zstd_bomb)
import numpy as np
import pytest

PRED = '/stereo/left/semantic/labels'
PERIOD = 58_823_529


def _run(capsys, *argv):
    try:
        code = evaluate.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_error_line(code, err, match=''):
    """Exit 2, exactly one stderr line (ours), no traceback, and it says ``match``."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith('evaluate: error: '), err
    assert 'Traceback' not in err and match in lines[0], (match, lines[0])


def write_bag(path, count=3, seed=0, storage='mcap'):
    """Write a bag with predictions, GT labelIds and instanceIds (tiny frames)."""
    rng = np.random.default_rng(seed)
    with BagWriter(path, storage=storage) as bag:
        for index in range(count):
            stamp = STAMP + index * PERIOD
            gt = np.kron(np.array([7, 8, 26, 24], np.uint8)[rng.integers(0, 4, (4, 8))],
                         np.ones((8, 8), np.uint8))
            inst = np.where(gt >= 24, gt.astype(np.uint16) * 1000 + index, gt)
            bag.write_image(PRED, ID_TO_TRAINID[gt], 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, gt, 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_INSTANCE_IDS, inst.astype(np.uint16), 'mono16', stamp,
                            'left')
    return path


@pytest.fixture(scope='module')
def shard(tmp_path_factory):
    """Return a complete, valid evaluate output folder (shard 0/2 of a 3-frame bag)."""
    root = tmp_path_factory.mktemp('shard')
    write_bag(root / 'bag')
    code = evaluate.main(['--bag', str(root / 'bag'), '--predictions-topic', PRED, '--shard',
                          '0/2', '--out', str(root / 'out'), '--quiet'])
    assert code == 0
    return root / 'out'


def _npy(header, data=b''):
    """Return a .npy member with any header (numpy's format 1.0 layout)."""
    text = repr(header).encode()
    text += b' ' * ((64 - (10 + len(text) + 1) % 64) % 64) + b'\n'
    return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(text)) + text + data


def _replace_member(npz, name, payload):
    """Rewrite ``npz`` with member ``name``.npy replaced by ``payload`` bytes."""
    with zipfile.ZipFile(npz) as src:
        members = {info.filename: src.read(info) for info in src.infolist()}
    members[f'{name}.npy'] = payload
    with zipfile.ZipFile(npz, 'w') as dst:
        for member, data in members.items():
            dst.writestr(member, data)


def _edit_counts(npz, **changes):
    """Re-save counts.npz with some arrays replaced (values a real run never writes)."""
    with np.load(npz) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)
    with open(npz, 'wb') as handle:
        np.savez(handle, **arrays)


def _corrupt(folder, case):
    """Damage a copy of a shard folder; return the text the error line must contain."""
    counts, metrics, frames = (folder / n for n in ('counts.npz', 'metrics.json', 'frames.csv'))
    confusion = np.zeros((19, 20), np.int64)
    if case == 'counts: garbage':
        counts.write_bytes(b'PK\x03\x04 this is no zip')
        return 'not an npz archive'
    if case == 'counts: empty file':
        counts.write_bytes(b'')
        return 'not an npz archive'
    if case == 'counts: a directory':
        counts.unlink()
        counts.mkdir()
        return 'not found'
    if case == 'counts: huge file':
        with counts.open('ab') as handle:
            handle.truncate(8 * 2**20)
        return 'far more than counts take'
    if case == 'counts: pickled object array':
        _replace_member(counts, 'confusion', _npy({'descr': '|O', 'fortran_order': False,
                                                   'shape': (1,)}, b'\x80\x04N.'))
        return 'object array'
    if case == 'counts: header larger than its data':
        _replace_member(counts, 'confusion', _npy({'descr': '<i8', 'fortran_order': False,
                                                   'shape': (19, 21)}, bytes(19 * 20 * 8)))
        return 'header over'
    if case == 'counts: negative counts':
        confusion[0, 0] = -92
        _edit_counts(counts, confusion=confusion)
        return 'impossible counts'
    if case == 'counts: negative frames':
        _edit_counts(counts, frames=np.int64(-92))
        return 'impossible counts'
    if case == 'counts: NaN weights':
        _edit_counts(counts, tp_weighted=np.full(19, np.nan))
        return 'impossible counts'
    if case == 'counts: more instance frames than frames':
        _edit_counts(counts, instance_frames=np.int64(10**6))
        return 'impossible counts'
    if case == 'counts: huge counts':
        confusion[0, 0] = 2**62
        _edit_counts(counts, confusion=confusion)
        return 'impossible counts'
    if case == 'counts: frames as a string':
        _edit_counts(counts, frames=np.array('many'))
        return 'frames must be one integer'
    if case == 'counts: other classes':
        _edit_counts(counts, class_names=np.array(['road'] * 19))
        return 'other classes'
    if case == 'counts: negative shape':  # its product matches the data: reshape would raise
        _replace_member(counts, 'confusion', _npy({'descr': '<i8', 'fortran_order': False,
                                                   'shape': (-19, -20)}, bytes(19 * 20 * 8)))
        return 'not a list of sizes'
    if case == 'counts: float confusion':
        _edit_counts(counts, confusion=confusion.astype(np.float64))
        return 'expected (19, 20) int64'
    texts = {
        'metrics: not JSON': '{"miou": ',
        'metrics: a list': '[1, 2]',
        'metrics: model without name': '{"model": {"input_size": [1, 2]}}',
        'metrics: model input size text': '{"model": {"name": "m", "input_size": "64x128"}}',
        'metrics: shard out of range': '{"shard": [3, 2]}',
        'metrics: shard of three numbers': '{"shard": [0, 1, 2]}',
        'metrics: skipped of strings': '{"skipped": ["x"]}',
        'metrics: skipped stamp text': '{"skipped": [{"stamp_ns": "x", "reason": "r"}]}',
        'metrics: stamp beyond int64': '{"skipped": [{"stamp_ns": 18446744073709551616, '
                                       '"reason": "r"}]}',
        'metrics: NaN timing': '{"timing": {"wall_s": NaN}}',
        'metrics: infinite timing': '{"timing": {"decode_s": 1e999}}',
        'metrics: timing as a list': '{"timing": [1]}',
        'metrics: timing of 3e10 years': '{"timing": {"wall_s": 1e18}}',
        'metrics: zero workers': '{"timing": {"workers": -3}}',
        'metrics: deep nesting': '[' * 100_000 + ']' * 100_000,
        'metrics: a 5000-digit number': '{"limit": ' + '9' * 5000 + '}',
        'metrics: limit zero': '{"limit": 0}',
        'metrics: topics of numbers': '{"topics": {"gt": 5}}',
    }
    if case in texts:
        metrics.write_text(texts[case])
        return 'is not a metrics.json of evaluate'
    if case == 'metrics: not UTF-8':
        metrics.write_bytes(b'\xff\xfe{"a": 1}')
        return 'is not a metrics.json of evaluate'
    if case == 'metrics: a directory':
        metrics.unlink()
        metrics.mkdir()
        return 'is not a metrics.json of evaluate'
    if case == 'metrics: a pipe':  # reading it would block forever
        metrics.unlink()
        os.mkfifo(metrics)
        return 'not a regular file'
    if case in ('metrics: a loop of links', 'frames: a dangling link'):
        # Before: exists() is False for these, so the file was silently left out of the merge.
        path = metrics if case.startswith('metrics') else frames
        path.unlink()
        path.symlink_to(path.name if case.startswith('metrics') else 'gone.csv')
        return 'not a regular file'
    if case == 'frames: a pipe':
        frames.unlink()
        os.mkfifo(frames)
        return 'not a regular file'
    rows = frames.read_text().splitlines()
    if case == 'frames: other columns':
        rows[0] = 'stamp,miou'
    elif case == 'frames: stamp text':
        rows[1] = 'x' + rows[1][rows[1].index(','):]
    elif case == 'frames: stamp beyond int64':
        rows[1] = str(2**64) + rows[1][rows[1].index(','):]
    elif case == 'frames: infinite score':
        rows[1] = rows[1].rsplit(',', 1)[0] + ',inf'
    elif case == 'frames: a NUL byte':
        rows[1] = rows[1] + '\0'
    elif case == 'frames: a field of 1 MB':
        rows[1] = rows[1] + ',"' + 'x' * 2**20 + '"'
    elif case == 'frames: a row missing':
        del rows[1]
        frames.write_text('\n'.join(rows) + '\n')
        return 'lists 1 frames but counts.npz counts 2'
    elif case == 'frames: not UTF-8':
        frames.write_bytes(b'\xff' * 10)
        return 'is not a frames.csv of evaluate'
    else:
        raise AssertionError(case)
    frames.write_text('\n'.join(rows) + '\n')
    return 'is not a frames.csv of evaluate'


MERGE_CASES = [
    'counts: garbage', 'counts: empty file', 'counts: a directory', 'counts: huge file',
    'counts: pickled object array', 'counts: header larger than its data',
    'counts: negative counts', 'counts: negative frames', 'counts: NaN weights',
    'counts: more instance frames than frames', 'counts: huge counts',
    'counts: frames as a string', 'counts: other classes', 'counts: float confusion',
    'counts: negative shape', 'metrics: timing of 3e10 years',
    'metrics: not JSON', 'metrics: a list', 'metrics: model without name',
    'metrics: model input size text', 'metrics: shard out of range',
    'metrics: shard of three numbers', 'metrics: skipped of strings',
    'metrics: skipped stamp text', 'metrics: stamp beyond int64', 'metrics: NaN timing',
    'metrics: infinite timing', 'metrics: timing as a list', 'metrics: zero workers',
    'metrics: deep nesting', 'metrics: a 5000-digit number', 'metrics: limit zero',
    'metrics: topics of numbers', 'metrics: not UTF-8', 'metrics: a directory',
    'metrics: a pipe', 'frames: a pipe', 'metrics: a loop of links', 'frames: a dangling link',
    'frames: other columns', 'frames: stamp text', 'frames: stamp beyond int64',
    'frames: infinite score', 'frames: a NUL byte', 'frames: a field of 1 MB',
    'frames: a row missing', 'frames: not UTF-8',
]


@pytest.mark.parametrize('case', MERGE_CASES)
def test_merge_of_a_damaged_shard_exits_2_with_one_line(tmp_path, capsys, shard, case):
    folder = tmp_path / 'shard'
    shutil.copytree(shard, folder)
    match = _corrupt(folder, case)
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'merged', folder)
    assert_one_error_line(code, err, match)
    assert not (tmp_path / 'merged' / 'metrics.json').exists()


def _edit_metrics(folder, **changes):
    path = folder / 'metrics.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_sums_that_overflow_and_a_huge_shard_count_are_one_line(tmp_path, capsys, shard):
    """Each shard is valid alone; their sums overflow, or 2**62 - 1 shards are missing."""
    parts = [tmp_path / 'a', tmp_path / 'b']
    for index, part in enumerate(parts):
        shutil.copytree(shard, part)
        _edit_metrics(part, shard=[index, 2])
    for part in parts:  # before: the summed times were inf and json.dump raised
        _edit_metrics(part, timing={'wall_s': 1e308})
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'merged', *parts)
    assert_one_error_line(code, err, 'timing.wall_s is 1e+308')
    for part in parts:  # before: numpy's overflow warnings, then inf scores written
        _edit_metrics(part, timing={})
        _edit_counts(part / 'counts.npz', tp_weighted=np.full(19, 1e308))
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'merged', *parts)
    assert_one_error_line(code, err, 'overflow to infinity')
    assert not (tmp_path / 'merged').exists()
    _edit_metrics(parts[0], shard=[0, 2**62])  # before: set(range(2**62)), a MemoryError
    shutil.copy(shard / 'counts.npz', parts[0])
    assert evaluate.main(['merge', '--out', str(tmp_path / 'merged'), str(parts[0])]) == 0
    err = capsys.readouterr().err  # a partial merge: one warning line, the first 8 named
    assert err.count('\n') == 1 and f'8/{2**62} and {2**62 - 9} more' in err, err


@pytest.mark.parametrize('name', ['metrics.json', 'frames.csv', 'confusion.png'])
def test_a_pipe_where_an_output_goes_is_refused_not_written_into(tmp_path, capsys, shard, name):
    """Before: open() of the FIFO blocked forever (the merge hung)."""
    (tmp_path / 'out').mkdir()
    os.mkfifo(tmp_path / 'out' / name)
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'out', shard)
    assert_one_error_line(code, err, 'is not a regular file (a pipe or device)')


def test_negative_counts_no_longer_merge_into_negative_frames(tmp_path, capsys, shard):
    """The issue's case: counts of -92 frames merged into '-92 frames'."""
    folder = tmp_path / 'shard'
    shutil.copytree(shard, folder)
    (folder / 'metrics.json').unlink()
    (folder / 'frames.csv').unlink()
    _edit_counts(folder / 'counts.npz', frames=np.int64(-94))
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'merged', shard, folder)
    assert_one_error_line(code, err, 'frames = -94')


def test_merge_paths_that_cannot_work(tmp_path, capsys, shard):
    note = tmp_path / 'note.txt'
    note.write_text('x')
    cases = [
        (['merge', '--out', tmp_path / 'a', note], 'is a file; pass the output folder'),
        (['merge', '--out', tmp_path / 'b', shard, shard / 'counts.npz'], 'more than once'),
        (['merge', '--out', note, shard], 'is a file, not a folder'),
        (['merge', '--out', note / 'sub', shard], 'is a file, not a folder'),
    ]
    (tmp_path / 'c' / 'report.md').mkdir(parents=True)
    cases.append((['merge', '--out', tmp_path / 'c', shard], 'report.md is a folder'))
    for argv, match in cases:
        code, err = _run(capsys, *argv)
        assert_one_error_line(code, err, match)


def test_merge_writes_nothing_partial_when_a_later_shard_is_bad(tmp_path, capsys, shard):
    bad = tmp_path / 'bad'
    shutil.copytree(shard, bad)
    (bad / 'counts.npz').write_bytes(b'')
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'm', shard, bad)
    assert_one_error_line(code, err, str(bad / 'counts.npz'))
    assert not (tmp_path / 'm').exists()


# -- evaluate on a bag ------------------------------------------------------------------------

@pytest.mark.parametrize('argv, match', [
    (['--tolerance-ms', 'inf'], '--tolerance-ms must be 0..60000'),
    (['--tolerance-ms', 'nan'], '--tolerance-ms must be 0..60000'),
    (['--tolerance-ms', '-1'], '--tolerance-ms must be 0..60000'),
    (['--tolerance-ms', '1e300'], '--tolerance-ms must be 0..60000'),
    (['--tolerance-ms', 'ten'], "invalid float value: 'ten'"),
    (['--batch-size', '0'], 'batch size must be 1..256'),
    (['--batch-size', '100000000'], 'batch size must be 1..256'),
    (['--limit', '0'], 'limit must be at least 1'),
    (['--limit', '-5'], 'limit must be at least 1'),
    (['--shard', '1/0'], 'shard 1/0 does not exist'),
    (['--shard=-1/2'], 'does not exist'),
    (['--shard', '5'], 'is not i/n'),
    (['--shard', f'0/{2**63}'], 'n must be below 2**63'),  # merge could not read it back
])
def test_bad_option_values_exit_2_with_one_line(tmp_path, capsys, argv, match):
    write_bag(tmp_path / 'bag', count=1)
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED, '--out',
                     tmp_path / 'out', '--quiet', *argv)
    assert_one_error_line(code, err, match)


def test_paths_that_are_not_bags_exit_2(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    garbage = tmp_path / 'garbage.mcap'
    garbage.write_bytes(b'\0' * 100)
    text = tmp_path / 'notes.txt'
    text.write_text('hello')
    for bag, match in [(tmp_path / 'empty', 'not a rosbag2'), (garbage, 'MCAP magic'),
                       (text, 'not a rosbag2'), ('/dev/null', 'not a rosbag2'),
                       (tmp_path / 'missing', 'does not exist')]:
        code, err = _run(capsys, '--bag', bag, '--predictions-topic', PRED, '--out',
                         tmp_path / 'out', '--quiet')
        assert_one_error_line(code, err, match)


def test_out_that_cannot_be_written_exits_2_before_reading_the_bag(tmp_path, capsys):
    write_bag(tmp_path / 'bag', count=1)
    note = tmp_path / 'note.txt'
    note.write_text('x')
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED, '--out',
                     note, '--quiet')
    assert_one_error_line(code, err, 'is a file, not a folder')
    (tmp_path / 'out' / 'counts.npz').mkdir(parents=True)
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED, '--out',
                     tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, 'counts.npz is a folder')


def test_bag_with_the_topics_but_no_messages_exits_2(tmp_path, capsys):
    path = write_mcap(tmp_path / 'empty.mcap', b'', topics=(PRED, TOPIC_GT_LABEL_IDS))
    code, err = _run(capsys, '--bag', path, '--predictions-topic', PRED, '--no-instances',
                     '--out', tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, 'no frame of')
    assert json.loads((tmp_path / 'out' / 'metrics.json').read_text())['frames'] == 0


def test_bag_whose_frames_are_all_skipped_exits_2(tmp_path, capsys):
    with BagWriter(tmp_path / 'bag') as bag:
        for index in range(2):
            bag.write_image(PRED, np.zeros((8, 8), np.uint8), 'mono8', STAMP + index, 'f')
            bag.write_image(TOPIC_GT_LABEL_IDS, np.zeros((4, 8), np.uint8), 'mono8',
                            STAMP + index, 'f')
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED,
                     '--no-instances', '--out', tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, '2 were skipped')


def test_a_shard_without_frames_of_its_own_is_fine(tmp_path, capsys):
    write_bag(tmp_path / 'bag', count=1)
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED, '--shard',
                     '1/2', '--out', tmp_path / 'out', '--quiet')
    assert code == 0, err


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_topic_of_another_message_type_exits_2(tmp_path, capsys, storage):
    from cityseg_ros.bags import CameraCalibration

    with BagWriter(tmp_path / 'bag', storage=storage) as bag:
        bag.write_image(PRED, np.zeros((8, 8), np.uint8), 'mono8', STAMP, 'f')
        bag.write_camera_info(TOPIC_GT_LABEL_IDS, CameraCalibration.pinhole(8, 8, 1, 1, 4, 4),
                              STAMP, 'f')
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED,
                     '--no-instances', '--out', tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, 'holds sensor_msgs/msg/CameraInfo')


@pytest.mark.parametrize('encoding, array, match', [
    ('mono16', np.zeros((8, 8), np.uint16), 'not mono8 labelIds'),
    ('rgb8', np.zeros((8, 8, 3), np.uint8), 'not mono8 labelIds'),
    ('32FC1', np.zeros((8, 8), np.float32), 'not mono8 labelIds'),
])
def test_ground_truth_of_another_encoding_exits_2(tmp_path, capsys, encoding, array, match):
    with BagWriter(tmp_path / 'bag') as bag:
        bag.write_image(PRED, np.zeros((8, 8), np.uint8), 'mono8', STAMP, 'f')
        bag.write_image(TOPIC_GT_LABEL_IDS, array, encoding, STAMP, 'f')
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', PRED,
                     '--no-instances', '--out', tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, match)


# -- as a user sees it: a child process, stderr at file descriptor level, 4 GiB cap ----------

_CLI_CASES = """
import json, logging, os, resource, sys, tempfile
from cityseg_ros.tools import evaluate, make_bag
tools = {'evaluate': evaluate, 'make_bag': make_bag}
results = []
for tool, argv in json.loads(sys.argv[1]):
    sys.stderr.flush()
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        try:
            try:
                code = tools[tool].main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 'exception'
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append({'code': code, 'stderr': err.read().decode(errors='replace')})
results.append(peak_rss())
print(json.dumps(results))
"""


def run_cli_cases(cases):
    """Run (tool, argv) cases in one 4 GiB-limited child; return [(code, stderr)], peak RSS."""
    report = run_child(_CLI_CASES, json.dumps([(t, [str(a) for a in argv]) for t, argv in cases]))
    return [(r['code'], r['stderr']) for r in report[:-1]], report[-1]


def test_hostile_invocations_in_a_child_print_one_line(tmp_path, shard):
    """Bombs, damage, bad values: one line on the real stderr, exit 2, bounded memory."""
    bomb = tmp_path / 'bomb.mcap'
    ok = mcap_message(1) + mcap_message(2)
    write_mcap(bomb, ok + mcap_chunk(ok, 'zstd', zstd_bomb(5), size=len(ok)),
               topics=(PRED, TOPIC_GT_LABEL_IDS))
    huge = tmp_path / 'huge'
    shutil.copytree(shard, huge)
    _replace_member(huge / 'counts.npz', 'confusion',
                    _npy({'descr': '<i8', 'fortran_order': False, 'shape': (2**40, 8)},
                         bytes(64)))
    cut = write_bag(tmp_path / 'cut', count=8)
    mcap = next(cut.glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size * 2 // 3])
    zero_page = write_bag(tmp_path / 'zero_page', storage='sqlite3')
    db3 = next(zero_page.glob('*.db3'))
    data = bytearray(db3.read_bytes()[:-100])
    data[16:18] = b'\0\0'  # page size 0: the salvage reader divided by it
    db3.write_bytes(bytes(data))
    root = tmp_path / 'cs'
    city = root / 'leftImg8bit' / 'train' / 'aachen'
    city.mkdir(parents=True)
    for index in range(2):
        left = city / f'aachen_00000{index}_000019_leftImg8bit.png'
        assert cv2.imwrite(str(left), np.zeros((8, 16, 3), np.uint8))
    make = ['--cityscapes-root', root, '--split', 'train', '--out', tmp_path / 'made']
    out = tmp_path / 'out'
    cases = [
        ('evaluate', ['--bag', bomb, '--predictions-topic', PRED, '--no-instances', '--out',
                      out / 'bomb'], 'inflates to more than'),
        ('evaluate', ['--bag', zero_page, '--predictions-topic', PRED, '--out', out / 'zero'],
         'nothing in it is readable'),
        ('make_bag', [*make, '--start-time', '3000000000'], '--start-time must be'),
        ('make_bag', [*make, '--start-time', 'inf'], '--start-time must be'),
        ('make_bag', [*make, '--rate-hz', '1e-300', '--start-time', '1'], 'past 2147483647 s'),
        ('evaluate', ['merge', '--out', out / 'huge', huge], 'header over'),
        ('evaluate', ['--bag', cut, '--predictions-topic', PRED, '--out', out / 'cut'],
         'partial: true'),
        ('evaluate', ['--bag', cut, '--predictions-topic', PRED, '--tolerance-ms', 'inf',
                      '--out', out / 'inf'], '--tolerance-ms'),
    ]
    results, peak = run_cli_cases([(tool, argv) for tool, argv, _ in cases])
    for (tool, argv, match), (code, err) in zip(cases, results):
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, (argv, code, err)
        assert lines[0].startswith(f'{tool}: error: ') and match in lines[0], (match, err)
    assert peak < 2 * GIB


def test_empty_predictions_topic_and_unmakeable_out_fail_before_any_model(tmp_path, capsys):
    write_bag(tmp_path / 'bag', count=1)
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--predictions-topic', ' ', '--out',
                     tmp_path / 'out', '--quiet')
    assert_one_error_line(code, err, '--predictions-topic is empty')
    code, err = _run(capsys, '--bag', tmp_path / 'bag', '--weights', tmp_path / 'missing.pth',
                     '--out', '/proc/no/such/folder', '--quiet')
    assert_one_error_line(code, err, 'cannot create the output folder /proc/no/such/folder')


def test_stamps_before_1970_round_trip_through_a_merge(tmp_path, capsys, shard):
    folder = tmp_path / 'shard'
    shutil.copytree(shard, folder)
    metrics = json.loads((folder / 'metrics.json').read_text())
    metrics['skipped'] = [{'stamp_ns': -5_000_000_000, 'reason': 'no ground truth labelIds'}]
    (folder / 'metrics.json').write_text(json.dumps(metrics))
    rows = (folder / 'frames.csv').read_text().splitlines()
    rows[1] = '-7' + rows[1][rows[1].index(','):]
    (folder / 'frames.csv').write_text('\n'.join(rows) + '\n')
    code, err = _run(capsys, 'merge', '--out', tmp_path / 'merged', folder)
    assert code == 0, err
    merged = json.loads((tmp_path / 'merged' / 'metrics.json').read_text())
    assert merged['skipped'][0]['stamp_ns'] == -5_000_000_000
