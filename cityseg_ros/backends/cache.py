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

"""The cache of exported ONNX graphs and built engines: keyed, bounded, atomic, verified.

An entry is a directory ``<root>/<model>-<H>x<W>-<kind>-<digest>/`` whose name comes from a
:class:`CacheKey` (model, weights sha256, input size, batch, precision and the versions of
everything that shaped the files). It is built in a temporary directory beside it and renamed
into place only when complete, with ``meta.json`` listing the size and sha256 of every file; a
load re-hashes the files and rebuilds an entry that does not match (truncated, edited, half
written by a crash) instead of trusting it. Least recently used entries are evicted beyond
:data:`MAX_ENTRIES` entries or :data:`MAX_BYTES` bytes.
"""

from dataclasses import asdict, dataclass, field
import hashlib
import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
import time
from typing import Callable, Mapping, Optional, Sequence

__all__ = ['CacheKey', 'EngineCache', 'engine_cache_dir', 'file_sha256', 'MAX_BYTES',
           'MAX_ENTRIES', 'state_sha256']

logger = logging.getLogger(__name__)

#: Overrides where engines live (default: beside the weights cache, ``.../cityseg_ros/engines``).
ENGINE_CACHE_ENV = 'CITYSEG_ROS_ENGINE_CACHE'
#: Bounds of the cache; the least recently used entries go first.
MAX_ENTRIES = 24
MAX_BYTES = 32 << 30
META = 'meta.json'
#: Bumped when the meta format or the way entries are built changes: old entries then miss.
FORMAT = 1
_TMP_PREFIX = '.tmp-'
_STALE_TMP_S = 24 * 3600.0
_CHUNK = 1 << 22


def engine_cache_dir() -> Path:
    """Where exported graphs and engines live.

    ``$CITYSEG_ROS_ENGINE_CACHE`` if set; else ``engines/`` inside ``$CITYSEG_ROS_CACHE`` when
    that is set; else ``cityseg_ros/engines`` beside the weights cache in the XDG cache
    (``~/.cache/cityseg_ros/engines``).
    """
    from cityseg_ros.checkpoints import CACHE_ENV, cache_dir

    if os.environ.get(ENGINE_CACHE_ENV):
        return Path(os.environ[ENGINE_CACHE_ENV]).expanduser()
    if os.environ.get(CACHE_ENV):
        return cache_dir() / 'engines'
    return cache_dir().parent / 'engines'


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as fh:
        for block in iter(lambda: fh.read(_CHUNK), b''):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(net) -> str:
    """Return the sha256 of a module's weights as they are now (names, dtypes, shapes, bytes).

    The weights as loaded and prepared (e.g. BatchNorm folded), not the checkpoint file: random
    weights, a fine-tuned file or a changed fusion then never hit a stale graph.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        data = tensor.detach().cpu().contiguous()  # NCHW bytes whatever the memory format
        digest.update(f'{name}|{data.dtype}|{tuple(data.shape)}|'.encode())
        if data.numel():
            digest.update(data.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """What makes one cached graph or engine different from another.

    Attributes:
        kind: what the entry holds: ``'onnx'`` (exported graph), ``'openvino'`` (compiled
            blob), ``'tensorrt'`` (serialized engine), ``'ort_tensorrt'`` (ONNX Runtime's
            TensorRT engine cache).
        model: zoo name.
        weights_sha256: :func:`state_sha256` of the network.
        input_size: (H, W) of the network input.
        batch: ``'dynamic'``, a fixed batch ``'2'``, or an engine profile ``'1-2-8'``.
        precision: fp32, fp16 or bf16.
        versions: (name, version) of every package, device or format that shaped the files.
    """

    kind: str
    model: str
    weights_sha256: str
    input_size: tuple
    batch: str
    precision: str
    versions: tuple = field(default_factory=tuple)

    def fields(self) -> dict:
        """Return the key as JSON-able values (what ``meta.json`` records)."""
        values = asdict(self)
        values['input_size'] = list(self.input_size)
        values['versions'] = [list(v) for v in self.versions]
        values['format'] = FORMAT
        return values

    def digest(self) -> str:
        """Return 16 hex digits of the sha256 of :meth:`fields`."""
        text = json.dumps(self.fields(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def dirname(self) -> str:
        """Return the entry's directory name: readable prefix, then the digest."""
        h, w = self.input_size
        return f'{self.model}-{h}x{w}-{self.kind}-{self.digest()}'


class EngineCache:
    """A directory of cache entries (see the module docstring).

    Args:
        root: the cache directory; default :func:`engine_cache_dir`.
        max_entries: most entries kept.
        max_bytes: most bytes kept (an entry larger than this alone is still kept while used).
    """

    def __init__(self, root: Optional[Path] = None, max_entries: int = MAX_ENTRIES,
                 max_bytes: int = MAX_BYTES) -> None:
        self.root = Path(root) if root is not None else engine_cache_dir()
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def path(self, key: CacheKey) -> Path:
        """Return where the entry of ``key`` lives (whether or not it exists)."""
        return self.root / key.dirname()

    def lookup(self, key: CacheKey) -> Optional[Path]:
        """Return the verified entry of ``key`` or None; a bad entry is removed, with a warning."""
        entry = self.path(key)
        if not entry.exists():
            return None
        problem = verify_entry(entry, key)
        if problem is None:
            os.utime(entry / META)  # last use, for eviction
            return entry
        logger.warning('engine cache entry %s is not usable (%s): rebuilding it', entry, problem)
        shutil.rmtree(entry, ignore_errors=True)
        return None

    def get_or_build(self, key: CacheKey, build: Callable[[Path], None],
                     progress: Optional[Callable[[str], None]] = None,
                     what: str = 'entry') -> Path:
        """Return the entry of ``key``, building it with ``build(tmp_dir)`` when absent or bad.

        ``build`` writes its files into the empty directory it is given; the directory is then
        described in ``meta.json`` and renamed into place. If another process finished the same
        entry first, its entry is used and ours discarded.

        Args:
            key: the entry's key.
            build: writes the entry's files into the given directory.
            progress: gets "built ... in N s" and "loaded ..." lines.
            what: how to call the entry in those lines.
        """
        say = progress or logger.info
        entry = self.lookup(key)
        if entry is not None:
            say(f'{what}: cached in {entry}')
            return entry
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f'{_TMP_PREFIX}{key.dirname()}-', dir=self.root))
        start = time.perf_counter()
        try:
            build(tmp)
            write_meta(tmp, key)
            try:
                os.rename(tmp, self.path(key))
            except OSError:  # another process renamed its copy first: use that one
                shutil.rmtree(tmp, ignore_errors=True)
                entry = self.lookup(key)
                if entry is None:
                    raise
                return entry
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        entry = self.path(key)
        say(f'{what}: built in {time.perf_counter() - start:.1f} s, cached in {entry}')
        self.evict(keep=(entry,))
        return entry

    def entries(self) -> list:
        """Return the complete entries as (last use, bytes, path), oldest first."""
        found = []
        if not self.root.is_dir():
            return found
        for path in self.root.iterdir():
            meta = path / META
            if path.name.startswith(_TMP_PREFIX) or not meta.is_file():
                continue
            size = sum(f.stat().st_size for f in path.rglob('*') if f.is_file())
            found.append((meta.stat().st_mtime, size, path))
        return sorted(found)

    def evict(self, keep: Sequence[Path] = ()) -> list:
        """Remove least recently used entries beyond the bounds, and stale temporary dirs.

        Returns:
            The removed entries' paths.
        """
        removed = []
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        count = len(entries)
        for _, size, path in entries:
            if count <= self.max_entries and total <= self.max_bytes:
                break
            if path in keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
            count -= 1
            total -= size
        now = time.time()
        for path in self.root.glob(f'{_TMP_PREFIX}*'):
            try:
                if now - path.stat().st_mtime > _STALE_TMP_S:  # left by a killed build
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass
        if removed:
            logger.info('engine cache: evicted %d old entr%s from %s', len(removed),
                        'y' if len(removed) == 1 else 'ies', self.root)
        return removed


def write_meta(entry: Path, key: CacheKey, extra: Optional[Mapping] = None) -> None:
    """Describe every file under ``entry`` (size, sha256) in ``meta.json``, written last."""
    files = {}
    for path in sorted(entry.rglob('*')):
        if path.is_file() and path.name != META:
            rel = path.relative_to(entry).as_posix()
            files[rel] = {'size': path.stat().st_size, 'sha256': file_sha256(path)}
    meta = {'key': key.fields(), 'files': files, 'created': time.time()}
    meta.update(extra or {})
    tmp = entry / (META + '.tmp')
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))
    os.replace(tmp, entry / META)


def verify_entry(entry: Path, key: CacheKey) -> Optional[str]:
    """Say what is wrong with an entry, or None when its key and every file match ``meta.json``."""
    try:
        meta = json.loads((entry / META).read_text())
        files = meta['files']
        recorded_key = meta['key']
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f'{META} unreadable: {exc}'
    if recorded_key != key.fields():
        return 'its key differs from the one asked for'
    for rel, record in files.items():
        path = entry / rel
        try:
            if path.stat().st_size != record['size']:
                return f'{rel} has {path.stat().st_size} bytes, {META} says {record["size"]}'
            if file_sha256(path) != record['sha256']:
                return f'{rel} fails its sha256'
        except (OSError, KeyError, TypeError) as exc:
            return f'{rel}: {exc}'
    return None
