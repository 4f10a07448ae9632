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

"""Crafted bags: huge lengths and decompression bombs get a BagError in bounded memory.

Each bomb is a tiny file built here and read in a subprocess under a 4 GiB address-space
limit, so a regression fails fast instead of taking the machine down; the child reports the
error and its peak resident memory.
"""

import json
import struct

from cityseg_ros.bags import BagReader, BagWriter, MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES
from cityseg_ros.errors import BagError
from hostile import (GIB, image_cdr, lz4_bomb, lz4_compress, mcap_chunk, mcap_message,
                     mcap_record, mcap_string, run_child, STAMP, TOPIC, write_mcap, zstd_bomb,
                     zstd_compress)
import numpy as np
import pytest

# Far below what a bomb would take (several GiB) and far above what reading a small bag takes.
PEAK_RSS_LIMIT = 1 * GIB

_READ_ALL = """
import json, resource, sys
from cityseg_ros.bags import BagReader
from cityseg_ros.errors import BagError
result = {'error': None, 'images': 0}
try:
    with BagReader(sys.argv[1]) as bag:
        for record in bag.read_images(sys.argv[2]):
            result['images'] += 1
except BagError as exc:
    result['error'] = str(exc)
result['peak_rss'] = peak_rss()
print(json.dumps(result))
"""


def read_in_child(path, topic=TOPIC):
    """Read every image of ``topic`` in a 4 GiB-limited child; return its JSON report."""
    return run_child(_READ_ALL, path, topic)


# -- the builder itself is a valid bag -----------------------------------------------------------

@pytest.mark.parametrize('footer', [True, False])
@pytest.mark.parametrize('compression', ['', 'zstd', 'lz4'])
def test_the_test_mcap_writer_makes_bags_that_read_back(tmp_path, footer, compression):
    records = mcap_message(data=image_cdr(3)) + mcap_message(data=image_cdr(5), stamp=STAMP + 1)
    stored = {'': records, 'zstd': zstd_compress(records), 'lz4': lz4_compress(records)}
    path = write_mcap(tmp_path / 'ok.mcap', mcap_chunk(records, compression, stored[compression]),
                      footer=footer)
    values = []
    with BagReader(path) as bag:
        assert bag.damaged is not footer
        try:
            for record in bag.read_images(TOPIC):
                values.append(int(record.image[0, 0]))
        except BagError as exc:
            assert not footer and 'cut off' in str(exc)
    assert values == [3, 5]


# -- crafted files ---------------------------------------------------------------------------

def _crafted(case):
    """Return (data section, footer?) of a crafted file, and what the error must say."""
    ok = mcap_message()
    if case == 'huge message length':
        return ok + struct.pack('<BQ', 0x05, 2**62) + bytes(64), 'claims'
    if case == 'huge skipped record':  # an attachment record that would be skipped
        return ok + struct.pack('<BQ', 0x09, 2**63 - 1) + bytes(64), 'claims'
    if case == 'message longer than the cap':  # zeros: a small chunk on disk
        big = mcap_message(data=bytes(MAX_MESSAGE_BYTES + 1))
        return ok + mcap_chunk(big, 'zstd', zstd_compress(big)), f'more than {MAX_MESSAGE_BYTES}'
    if case == 'huge chunk payload length':
        body = struct.pack('<QQQI', 0, 0, 10, 0) + mcap_string('') + struct.pack('<Q', 2**62)
        return ok + mcap_record(0x06, body + bytes(32)), 'longer than its record'
    if case == 'huge name':
        channel = struct.pack('<HH', 2, 1) + struct.pack('<I', 2**31) + b'/x' + mcap_string('cdr')
        return ok + mcap_record(0x04, channel), 'longer than its record'
    if case == 'zstd bomb, small declared size':
        return ok + mcap_chunk(ok, 'zstd', zstd_bomb(5), size=len(ok)), 'inflates to more'
    if case == 'zstd bomb, huge declared size':
        return ok + mcap_chunk(ok, 'zstd', zstd_bomb(5), size=2**40), 'declares'
    if case == 'lz4 bomb':
        return ok + mcap_chunk(ok, 'lz4', lz4_bomb(5), size=len(ok)), 'inflates to more'
    if case == 'chunk of an unknown compression':
        return ok + mcap_chunk(ok, 'brotli', ok), "compression 'brotli'"
    raise AssertionError(case)


CASES = ['huge message length', 'huge skipped record', 'message longer than the cap',
         'huge chunk payload length', 'huge name', 'zstd bomb, small declared size',
         'zstd bomb, huge declared size', 'lz4 bomb', 'chunk of an unknown compression']


@pytest.mark.parametrize('footer', [True, False], ids=['intact-looking', 'cut-off'])
@pytest.mark.parametrize('case', CASES)
def test_crafted_mcap_raises_bag_error_in_bounded_memory(tmp_path, case, footer):
    data, match = _crafted(case)
    path = write_mcap(tmp_path / 'crafted.mcap', data, footer=footer)
    assert path.stat().st_size < 32 * 2**20
    report = read_in_child(path)
    assert report['error'] is not None and match in report['error'], report
    assert report['images'] == 1  # the message before the crafted record was read
    assert report['peak_rss'] < PEAK_RSS_LIMIT, report


def test_crafted_summary_is_not_trusted(tmp_path):
    """A summary whose maps claim more bytes than they have: the data is scanned instead."""
    path = write_mcap(tmp_path / 'ok.mcap', mcap_message())
    data = bytearray(path.read_bytes())
    (pos,) = struct.unpack_from('<Q', data, len(data) - 8 - 20)  # the footer's summary start
    while data[pos] != 0x0B:  # walk the summary records to the statistics
        pos += 9 + struct.unpack_from('<Q', data, pos + 1)[0]
    count_len = pos + 9 + struct.calcsize('<QHIIIIQQ')
    data[count_len:count_len + 4] = struct.pack('<I', 2**31)
    path.write_bytes(bytes(data))
    report = read_in_child(path)
    assert report == {'error': None, 'images': 1, 'peak_rss': report['peak_rss']}


def test_chunk_declaring_more_than_the_cap_is_refused_before_inflating(tmp_path):
    records = mcap_message()
    big = mcap_chunk(records, 'zstd', zstd_compress(records), size=MAX_CHUNK_BYTES + 1)
    path = write_mcap(tmp_path / 'big.mcap', big)
    with BagReader(path) as bag:
        with pytest.raises(BagError, match=f'declares {MAX_CHUNK_BYTES + 1} bytes'):
            list(bag.read_images(TOPIC))


# -- sqlite3 ---------------------------------------------------------------------------------

def _sqlite_bag(path, frames=3):
    with BagWriter(path, storage='sqlite3') as bag:
        for i in range(frames):
            bag.write_image(TOPIC, np.full((40, 60), i, np.uint8), 'mono8', STAMP + i, 'f')
    return next(path.glob('*.db3'))


@pytest.mark.parametrize('page_size', [0, 3, 700])
def test_sqlite3_bag_with_an_impossible_page_size_is_refused(tmp_path, page_size):
    db3 = _sqlite_bag(tmp_path / 'bag')
    data = bytearray(db3.read_bytes()[:-100])  # cut short: the salvage reader reads the header
    data[16:18] = struct.pack('>H', page_size)
    db3.write_bytes(bytes(data))
    with pytest.raises(BagError, match='nothing in it is readable'):
        BagReader(tmp_path / 'bag').open()


def test_zstd_bomb_in_a_message_compressed_bag_is_refused_in_bounded_memory(tmp_path):
    import sqlite3

    db3 = _sqlite_bag(tmp_path / 'bag')
    meta = tmp_path / 'bag' / 'metadata.yaml'
    meta.write_text(meta.read_text().replace("compression_mode: ''", 'compression_mode: MESSAGE')
                    .replace("compression_format: ''", 'compression_format: zstd'))
    assert 'MESSAGE' in meta.read_text()
    with sqlite3.connect(db3) as db:
        rows = db.execute('SELECT id, data FROM messages ORDER BY id').fetchall()
        first = zstd_compress(rows[0][1])
        db.execute('UPDATE messages SET data = ? WHERE id = ?', (first, rows[0][0]))
        db.execute('UPDATE messages SET data = ? WHERE id = ?', (zstd_bomb(5), rows[1][0]))
    report = read_in_child(tmp_path / 'bag')
    assert report['images'] == 1 and 'inflates to more' in report['error'], report
    assert report['peak_rss'] < PEAK_RSS_LIMIT, report


def test_file_compressed_bags_are_refused_with_a_reason(tmp_path):
    _sqlite_bag(tmp_path / 'bag')
    meta = tmp_path / 'bag' / 'metadata.yaml'
    meta.write_text(meta.read_text().replace("compression_mode: ''", 'compression_mode: FILE'))
    with pytest.raises(BagError, match='compression_mode: file'):
        BagReader(tmp_path / 'bag').open()


def test_huge_metadata_yaml_is_ignored(tmp_path):
    _sqlite_bag(tmp_path / 'bag')
    meta = tmp_path / 'bag' / 'metadata.yaml'
    with meta.open('a') as handle:
        handle.truncate(32 * 2**20)  # sparse: 32 MiB of NUL bytes
    with BagReader(tmp_path / 'bag') as bag:
        assert len(list(bag.read_images(TOPIC))) == 3


def test_unreadable_metadata_yaml_is_one_warning_however_often_the_bag_opens(tmp_path, caplog):
    """Before: one warning per reader (evaluate opens a bag once per stream: 4 lines)."""
    _sqlite_bag(tmp_path / 'bag')
    (tmp_path / 'bag' / 'metadata.yaml').write_text('[' * 300 + ']' * 300 + ' ]')
    for _ in range(4):
        with BagReader(tmp_path / 'bag') as bag:
            assert len(list(bag.read_images(TOPIC))) == 3
    warnings = [r for r in caplog.records if 'not a readable rosbag2 metadata' in r.message]
    assert len(warnings) == 1, caplog.text


def test_paths_that_are_not_bags(tmp_path):
    (tmp_path / 'dir.mcap').mkdir()
    with pytest.raises(BagError, match='not a rosbag2'):
        BagReader(tmp_path / 'dir.mcap').open()
    with pytest.raises(BagError, match='not a rosbag2'):
        BagReader('/dev/null').open()
    empty = tmp_path / 'empty.mcap'
    empty.write_bytes(b'')
    with pytest.raises(BagError, match='nothing in it is readable'):
        BagReader(empty).open()
    listed = tmp_path / 'bag'
    listed.mkdir()
    (listed / 'metadata.yaml').write_text(json.dumps({'rosbag2_bagfile_information': {
        'relative_file_paths': ['../../../etc/passwd']}}))
    with pytest.raises(BagError, match='no .mcap or .db3 file'):
        BagReader(listed).open()


def test_more_channels_than_any_bag_has_are_refused(tmp_path):
    topics = [f'/t{i}' for i in range(10_001)]
    path = write_mcap(tmp_path / 'many.mcap', mcap_message(), topics=topics, footer=False)
    with pytest.raises(BagError, match='more than 10000'):
        BagReader(path).open()


def test_yaml_alias_bomb_in_metadata_is_not_expanded(tmp_path):
    _sqlite_bag(tmp_path / 'bag')
    meta = tmp_path / 'bag' / 'metadata.yaml'
    lines = ['a0: &a0 [x, x, x, x, x, x, x, x, x, x]']
    lines += [f'a{i}: &a{i} [' + ', '.join([f'*a{i - 1}'] * 10) + ']' for i in range(1, 9)]
    lines += ['rosbag2_bagfile_information:', '  compression_mode: *a8',
              '  compression_format: *a8', '  relative_file_paths: [*a8]']
    meta.write_text('\n'.join(lines) + '\n')  # 10**9 strings if expanded
    report = read_in_child(tmp_path / 'bag')
    assert report['error'] is None and report['images'] == 3, report
    assert report['peak_rss'] < PEAK_RSS_LIMIT


def test_an_io_error_while_reading_is_a_bag_error(tmp_path, monkeypatch):
    import cityseg_ros.bags as bags

    path = write_mcap(tmp_path / 'ok.mcap', mcap_message())

    def failing_read(*args, **kwargs):
        raise OSError(5, 'Input/output error')

    with BagReader(path) as bag:
        monkeypatch.setattr(bags._McapFile, '_read_record', failing_read)
        with pytest.raises(BagError, match='Input/output error'):
            list(bag.read_images(TOPIC))
