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

"""Hostile-input helpers: a minimal mcap writer, decompression bombs, a memory-capped child.

Shared by the bag reader's and the command-line tools' hostile-input tests.
"""

import json
import os
from pathlib import Path
import struct
import subprocess
import sys

from cityseg_ros.bags import _typestore, image_msg, IMAGE_TYPE
import numpy as np

TOPIC = '/cam'
MAGIC = b'\x89MCAP0\r\n'
STAMP = 1_600_000_000 * 10**9
GIB = 2**30
#: The address-space cap of :func:`run_child`: what the issue's checks run under.
RLIMIT_AS = 4 * GIB

# peak_rss(): this process's own high-water mark. Not getrusage's ru_maxrss: Linux carries
# that over from the parent across fork + exec, so a child of a large pytest process would
# report the parent's peak.
_PRELUDE = (f'import resource; resource.setrlimit(resource.RLIMIT_AS, ({RLIMIT_AS}, {RLIMIT_AS}))'
            '\n'
            'def peak_rss():\n'
            '    with open("/proc/self/status") as f:\n'
            '        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))\n')


def run_child(code, *args, timeout=600):
    """Run Python ``code`` in a child limited to :data:`RLIMIT_AS`.

    Returns:
        The child's last stdout line, parsed as JSON (the child prints its report there).
    """
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, '-c', _PRELUDE + code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- a minimal mcap writer (https://mcap.dev/spec) ---------------------------------------------

def mcap_string(text):
    data = text.encode()
    return struct.pack('<I', len(data)) + data


def mcap_record(opcode, content):
    return struct.pack('<BQ', opcode, len(content)) + content


def image_cdr(value=7):
    """Return a serialized 6x4 mono8 sensor_msgs/Image, every pixel ``value``."""
    msg = image_msg(np.full((4, 6), value, np.uint8), 'mono8', STAMP, 'f')
    return bytes(_typestore().serialize_cdr(msg, IMAGE_TYPE))


def mcap_message(channel=1, data=None, stamp=STAMP):
    data = image_cdr() if data is None else data
    return mcap_record(0x05, struct.pack('<HIQQ', channel, 0, stamp, stamp) + data)


def mcap_chunk(records, compression='', stored=None, size=None):
    """Return a chunk record of ``records``; ``stored`` and ``size`` may lie about them."""
    stored = records if stored is None else stored
    size = len(records) if size is None else size
    head = struct.pack('<QQQI', STAMP, STAMP, size, 0) + mcap_string(compression)
    return mcap_record(0x06, head + struct.pack('<Q', len(stored)) + stored)


def mcap_definitions(topics=(TOPIC,)):
    """Return the schema record of sensor_msgs/Image and one cdr channel per topic (ids 1..)."""
    schema = struct.pack('<H', 1) + mcap_string(IMAGE_TYPE) + mcap_string('ros2msg')
    out = mcap_record(0x03, schema + mcap_string(''))
    for channel, topic in enumerate(topics, 1):
        head = struct.pack('<HH', channel, 1) + mcap_string(topic) + mcap_string('cdr')
        out += mcap_record(0x04, head + struct.pack('<I', 0))
    return out


def write_mcap(path, data, topics=(TOPIC,), footer=True):
    """Write an mcap whose data section is ``data``; with a summary and footer if asked."""
    out = MAGIC + mcap_record(0x01, mcap_string('ros2') + mcap_string('cityseg test'))
    out += mcap_definitions(topics) + data + mcap_record(0x0F, struct.pack('<I', 0))
    if footer:
        summary = len(out)
        counts = b''.join(struct.pack('<HQ', c, 1) for c in range(1, len(topics) + 1))
        stats = struct.pack('<QHIIIIQQ', len(topics), 1, len(topics), 0, 0, 0, STAMP, STAMP)
        stats += struct.pack('<I', len(counts)) + counts
        out += mcap_definitions(topics) + mcap_record(0x0B, stats)
        out += mcap_record(0x02, struct.pack('<QQI', summary, 0, 0)) + MAGIC
    path.write_bytes(out)
    return path


def _zstd():
    try:
        from compression import zstd  # Python >= 3.14
    except ImportError:
        from backports import zstd
    return zstd


def zstd_compress(data):
    return _zstd().compress(data)


def lz4_compress(data):
    import lz4.frame
    return lz4.frame.compress(data)


def zstd_bomb(gib):
    """Return concatenated zstd frames of zeros: a few KiB that inflate to ``gib`` GiB."""
    return zstd_compress(bytes(64 * 2**20)) * (gib * 16)


def lz4_bomb(gib):
    """Return concatenated lz4 frames of zeros (~4 MiB per GiB)."""
    return lz4_compress(bytes(64 * 2**20)) * (gib * 16)
