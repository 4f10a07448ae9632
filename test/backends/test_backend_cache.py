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


"""The engine cache: keys, atomic builds, verification on load, eviction (no runtime needed)."""

import json
import logging
import os
import time

from cityseg_ros.backends import cache as cache_mod
from cityseg_ros.backends.cache import (CacheKey, engine_cache_dir, EngineCache, META,
                                        state_sha256)
import pytest
import torch


def _key(**changes) -> CacheKey:
    fields = {'kind': 'onnx', 'model': 'espnetv2', 'weights_sha256': 'ab' * 32,
              'input_size': (64, 128), 'batch': 'dynamic', 'precision': 'fp32',
              'versions': (('torch', '2.13.0'),)}
    fields.update(changes)
    return CacheKey(**fields)


class Builder:
    """Writes one file per build and counts the builds."""

    def __init__(self, payload: bytes = b'graph bytes') -> None:
        self.payload = payload
        self.calls = 0

    def __call__(self, tmp) -> None:
        self.calls += 1
        (tmp / 'model.onnx').write_bytes(self.payload)


def test_key_names_every_field_and_changes_with_each():
    base = _key()
    assert base.dirname().startswith('espnetv2-64x128-onnx-')
    variants = [_key(model='hrnet_w48_ocr'), _key(weights_sha256='cd' * 32),
                _key(input_size=(128, 256)), _key(batch='2'), _key(precision='fp16'),
                _key(versions=(('torch', '2.14.0'),)), _key(kind='openvino')]
    digests = {base.digest()} | {k.digest() for k in variants}
    assert len(digests) == len(variants) + 1
    assert _key().digest() == base.digest()  # stable across instances


def test_entry_is_built_once_then_loaded(tmp_path):
    cache, build = EngineCache(tmp_path), Builder()
    lines = []
    first = cache.get_or_build(_key(), build, progress=lines.append, what='graph')
    second = cache.get_or_build(_key(), build, progress=lines.append, what='graph')
    assert first == second == tmp_path / _key().dirname()
    assert build.calls == 1
    assert (first / 'model.onnx').read_bytes() == b'graph bytes'
    meta = json.loads((first / META).read_text())
    assert meta['key'] == _key().fields()
    assert meta['files']['model.onnx']['size'] == len(b'graph bytes')
    assert 'built in' in lines[0] and 'cached in' in lines[1]
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'no_meta', 'bad_meta', 'other_key',
                                    'missing_file'])
def test_damaged_entry_is_rebuilt_not_trusted(tmp_path, caplog, damage):
    cache, build = EngineCache(tmp_path), Builder()
    entry = cache.get_or_build(_key(), build)
    graph = entry / 'model.onnx'
    if damage == 'truncate':
        graph.write_bytes(b'graph')
    elif damage == 'flip':
        graph.write_bytes(b'graph bytez')  # same size, other content
    elif damage == 'no_meta':  # a build killed before its meta was written
        (entry / META).unlink()
    elif damage == 'bad_meta':
        (entry / META).write_text('{"key": ')
    elif damage == 'other_key':
        meta = json.loads((entry / META).read_text())
        meta['key']['precision'] = 'fp16'
        (entry / META).write_text(json.dumps(meta))
    else:
        graph.unlink()
    with caplog.at_level(logging.WARNING, logger='cityseg_ros.backends.cache'):
        again = cache.get_or_build(_key(), build)
    assert build.calls == 2
    assert (again / 'model.onnx').read_bytes() == b'graph bytes'
    assert 'rebuilding' in caplog.text


def test_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def fail(tmp):
        (tmp / 'model.onnx').write_bytes(b'half')
        raise RuntimeError('exporter crashed')
    with pytest.raises(RuntimeError, match='exporter crashed'):
        cache.get_or_build(_key(), fail)
    assert list(tmp_path.iterdir()) == []
    assert cache.lookup(_key()) is None


def test_entry_finished_by_another_process_meanwhile_is_used(tmp_path):
    cache, other = EngineCache(tmp_path), Builder(b'theirs')

    def racing_build(tmp):
        (tmp / 'model.onnx').write_bytes(b'ours')
        # Another process completes the same entry while we build.
        EngineCache(tmp_path).get_or_build(_key(), other)
    entry = cache.get_or_build(_key(), racing_build)
    assert (entry / 'model.onnx').read_bytes() == b'theirs'
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]


def test_least_recently_used_entries_are_evicted_by_count(tmp_path):
    cache = EngineCache(tmp_path, max_entries=2)
    keys = [_key(input_size=(64, 64 * (i + 1))) for i in range(3)]
    cache.get_or_build(keys[0], Builder())
    cache.get_or_build(keys[1], Builder())
    old = time.time() - 100
    os.utime(tmp_path / keys[0].dirname() / META, (old, old))
    os.utime(tmp_path / keys[1].dirname() / META, (old + 1, old + 1))
    cache.lookup(keys[0])  # used again: now the most recent
    cache.get_or_build(keys[2], Builder())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [keys[0].dirname(), keys[2].dirname()])


def test_entries_are_evicted_by_size_but_never_the_one_just_built(tmp_path):
    cache = EngineCache(tmp_path, max_bytes=1000)
    small, big = _key(input_size=(64, 64)), _key(input_size=(64, 128))
    cache.get_or_build(small, Builder(b'x' * 100))
    old = time.time() - 100
    os.utime(tmp_path / small.dirname() / META, (old, old))
    cache.get_or_build(big, Builder(b'y' * 5000))  # alone above the bound: kept, small goes
    assert [p.name for p in tmp_path.iterdir()] == [big.dirname()]


def test_stale_temporary_directories_are_removed(tmp_path):
    stale = tmp_path / '.tmp-espnetv2-crashed'
    stale.mkdir()
    fresh = tmp_path / '.tmp-espnetv2-building'
    fresh.mkdir()
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    EngineCache(tmp_path).evict()
    assert not stale.exists() and fresh.exists()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(cache_mod.ENGINE_CACHE_ENV, raising=False)
    monkeypatch.delenv('CITYSEG_ROS_CACHE', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert engine_cache_dir() == tmp_path / 'xdg' / 'cityseg_ros' / 'engines'
    monkeypatch.setenv('CITYSEG_ROS_CACHE', str(tmp_path / 'weights'))
    assert engine_cache_dir() == tmp_path / 'weights' / 'engines'
    monkeypatch.setenv(cache_mod.ENGINE_CACHE_ENV, str(tmp_path / 'engines'))
    assert engine_cache_dir() == tmp_path / 'engines'


def test_weights_digest_follows_values_not_memory_format():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    digest = state_sha256(net)
    assert digest == state_sha256(net.to(memory_format=torch.channels_last))
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-3
    assert state_sha256(net) != digest
