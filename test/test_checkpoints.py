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

"""Weight files: cache location, resumable verified downloads from a local server, safe loads.

The HTTP server (``serving``) and the tiny zoo entry (``register_tiny``) are also used by
``tools/test_fetch_weights.py``.
"""

import contextlib
import dataclasses
import hashlib
import http.server
import logging
import os
from pathlib import Path
import re
import socket
import threading
import time
from typing import Optional
import urllib.parse

from cityseg_ros import checkpoints
from cityseg_ros.checkpoints import (cache_dir, check_file, download, fetch, load_checkpoint,
                                     load_state_dict, resolve_weights, verify, weights_url)
from cityseg_ros.errors import CheckpointError, DownloadError, ZooError
from cityseg_ros.models import zoo
import pytest
import torch
from torch import nn

PROXY_VARS = ('http_proxy', 'https_proxy', 'all_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY')


# --------------------------------------------------------------------------------------------
# A local HTTP server with Range support, and failure modes switched on per file


@dataclasses.dataclass
class ServerState:
    """What the test server serves and what it saw."""

    url: str = ''
    files: dict = dataclasses.field(default_factory=dict)       # name -> bytes
    cut_after: dict = dataclasses.field(default_factory=dict)   # name -> bytes sent, once
    no_range: set = dataclasses.field(default_factory=set)      # names answered 200 to Range
    requests: list = dataclasses.field(default_factory=list)    # (path, Range header or None)
    # Hostile servers, per name: the body repeats forever (with this Content-Length or none);
    # one byte every this many seconds; the status line and headers one byte at a time.
    endless: dict = dataclasses.field(default_factory=dict)     # name -> announced length|None
    trickle: dict = dataclasses.field(default_factory=dict)     # name -> seconds per byte
    slow_headers: dict = dataclasses.field(default_factory=dict)  # name -> seconds per byte


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a stuck client cannot hold a server thread

    def do_GET(self):  # noqa: N802 (http.server's naming)
        state = self.server.state
        name = urllib.parse.unquote(self.path.lstrip('/'))
        wanted = self.headers.get('Range')
        state.requests.append((self.path, wanted))
        if name in state.endless or name in state.trickle or name in state.slow_headers:
            self._hostile(state, name)
            return
        data = state.files.get(name)
        if data is None:
            self.send_error(404, 'Not Found')
            return
        start = 0
        if wanted and name not in state.no_range:
            start = int(re.fullmatch(r'bytes=(\d+)-', wanted).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header('Content-Range', f'bytes */{len(data)}')
                self.send_header('Content-Length', '0')
                self.end_headers()
                return
            self.send_response(206)
            self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Accept-Ranges', 'bytes')
        self.end_headers()
        cut = state.cut_after.pop(name, None)
        if cut is not None:
            # Send part of the promised body, then hang up: a connection lost mid-way.
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def _hostile(self, state, name):
        """Act as a server that never stops, trickles, or trickles its headers (30 s at most)."""
        data = state.files.get(name, b'x' * 65536)
        until = time.monotonic() + 30
        try:
            if name in state.slow_headers:
                for byte in b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n':
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(state.slow_headers[name])
                    if time.monotonic() > until:
                        return
                self.wfile.write(data[:10])
                return
            self.send_response(200)
            length = state.endless.get(name)
            if name in state.trickle:
                length = len(data)
            if length is not None:
                self.send_header('Content-Length', str(length))
            self.end_headers()
            self.close_connection = True
            if name in state.trickle:
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(state.trickle[name])
                    if time.monotonic() > until:
                        return
                return
            sent = 0
            while time.monotonic() < until and sent < 64 << 20:  # "endless": 64 MiB at most
                self.wfile.write(data)
                sent += len(data)
        except OSError:  # the client gave up: what the tests want
            pass

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(limit_s: float = 60.0):
    """Serve ``ServerState.files`` on 127.0.0.1 (ephemeral port); stops itself after limit_s."""
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state
    state.url = f'http://127.0.0.1:{httpd.server_address[1]}'
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    watchdog = threading.Timer(limit_s, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield state
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def closed_port_url() -> str:
    """Return a URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    return f'http://127.0.0.1:{port}'


def clear_proxies(monkeypatch) -> None:
    """Keep urllib from sending 127.0.0.1 requests through a proxy from the environment."""
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


# --------------------------------------------------------------------------------------------
# A tiny zoo entry


class TinyNet(nn.Module):
    """Conv + BN + 1x1 head: parameters, buffers and an int64 counter, like the real models."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.stem(x))))


def tiny_state(seed: int = 0, width: int = 4) -> dict:
    torch.manual_seed(seed)
    net = TinyNet(width)
    net.bn.running_mean.uniform_()
    return {k: v.clone() for k, v in net.state_dict().items()}


def tiny_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / 'tiny_src.pth'
    torch.save(tiny_state(1), path)
    return path.read_bytes()


def register_tiny(monkeypatch, name: str = 'tiny', data: Optional[bytes] = None,
                  sha256: Optional[str] = 'auto', url: str = 'https://example.invalid/w/tiny.pth',
                  adapter=zoo.identity_adapter, weights: Optional[tuple] = None) -> zoo.ModelSpec:
    """Add a zoo entry building TinyNet whose released file is ``data`` (sha256 from it)."""
    if weights is None:
        digest = sha256
        if sha256 == 'auto':
            digest = hashlib.sha256(data).hexdigest() if data is not None else None
        filename = url.rsplit('/', 1)[-1] if url else f'{name}.pth'
        wide_url = url and url.rsplit('/', 1)[0] + f'/{name}_wide.pth'
        weights = (zoo.WeightsFile(filename, url, sha256=digest,
                                   size=len(data) if data is not None else None,
                                   model_kwargs={'width': 4}),
                   zoo.WeightsFile(f'{name}_wide.pth', wide_url,
                                   model_kwargs={'width': 8}))
    spec = zoo.ModelSpec(name=name, builder=TinyNet, num_classes=2, mean=zoo.IMAGENET_MEAN,
                         std=zoo.IMAGENET_STD, test_size=(32, 64), resize='fixed',
                         align_corners=False, output_stride=1, weights=weights, adapter=adapter)
    monkeypatch.setitem(zoo.ZOO, name, spec)
    return spec


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch):
    clear_proxies(monkeypatch)


@pytest.fixture
def server():
    with serving() as state:
        yield state


# --------------------------------------------------------------------------------------------
# Cache location and path resolution


def test_cache_dir_prefers_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv('CITYSEG_ROS_CACHE', str(tmp_path / 'c'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert cache_dir() == tmp_path / 'c'
    monkeypatch.delenv('CITYSEG_ROS_CACHE')
    assert cache_dir() == tmp_path / 'x' / 'cityseg_ros' / 'weights'
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert cache_dir() == tmp_path / 'home' / '.cache' / 'cityseg_ros' / 'weights'


def test_resolve_weights_none_auto_and_path(monkeypatch, tmp_path):
    spec = register_tiny(monkeypatch, data=b'x')
    monkeypatch.setenv('CITYSEG_ROS_CACHE', str(tmp_path))
    assert resolve_weights(spec, None) is None
    with pytest.raises(CheckpointError, match='run fetch_weights --model tiny'):
        resolve_weights(spec, 'auto')
    (tmp_path / 'tiny.pth').write_bytes(b'x')
    assert resolve_weights(spec, 'auto') == tmp_path / 'tiny.pth'
    assert resolve_weights(spec, str(tmp_path / 'tiny.pth')) == tmp_path / 'tiny.pth'
    with pytest.raises(CheckpointError, match=r'nope\.pth not found; run fetch_weights --model '
                                              r'tiny or pass a file'):
        resolve_weights(spec, str(tmp_path / 'nope.pth'))


def test_resolve_auto_without_released_weights_says_so(monkeypatch):
    spec = register_tiny(monkeypatch, name='untrained', weights=())
    with pytest.raises(CheckpointError, match='no released weights'):
        resolve_weights(spec, 'auto')


# --------------------------------------------------------------------------------------------
# Downloads


PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_renames_into_place(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    dest = tmp_path / 'cache' / 'w.pth'
    out = download(f'{server.url}/w.pth', dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD),
                   progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in dest.parent.iterdir()) == ['w.pth']  # no .part, no record
    assert server.requests == [('/w.pth', None)]


def test_download_with_wrong_sha256_leaves_nothing(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    dest = tmp_path / 'w.pth'
    with pytest.raises(DownloadError, match='sha256') as info:
        download(f'{server.url}/w.pth', dest, sha256='0' * 64, progress=False)
    assert f'expected {"0" * 64}, got {PAYLOAD_SHA}' in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_download_with_wrong_size_leaves_nothing(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    with pytest.raises(DownloadError, match=f'sent {len(PAYLOAD)} bytes, expected 99999'):
        download(f'{server.url}/w.pth', tmp_path / 'w.pth', size=99999, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cut_connection_keeps_part_and_next_call_resumes_with_range(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    server.cut_after['w.pth'] = 3000
    dest = tmp_path / 'w.pth'
    url = f'{server.url}/w.pth'
    with pytest.raises(DownloadError, match='broke off after 3000 of 10240 bytes.*resume'):
        download(url, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False)
    part = tmp_path / 'w.pth.part'
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:3000]

    download(url, dest, sha256=PAYLOAD_SHA, size=len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests == [('/w.pth', None), ('/w.pth', 'bytes=3000-')]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    server.no_range.add('w.pth')
    (tmp_path / 'w.pth.part').write_bytes(b'stale bytes from another file')
    dest = download(f'{server.url}/w.pth', tmp_path / 'w.pth', sha256=PAYLOAD_SHA,
                    progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [('/w.pth', 'bytes=29-')]  # asked to resume, got a 200


def test_complete_part_with_unknown_size_survives_416(server, tmp_path):
    server.files['w.pth'] = PAYLOAD
    (tmp_path / 'w.pth.part').write_bytes(PAYLOAD)
    download(f'{server.url}/w.pth', tmp_path / 'w.pth', sha256=PAYLOAD_SHA, progress=False)
    assert (tmp_path / 'w.pth').read_bytes() == PAYLOAD
    assert server.requests == [('/w.pth', f'bytes={len(PAYLOAD)}-')]


def test_complete_part_with_known_size_needs_no_request(server, tmp_path):
    (tmp_path / 'w.pth.part').write_bytes(PAYLOAD)
    download(f'{server.url}/w.pth', tmp_path / 'w.pth', sha256=PAYLOAD_SHA, size=len(PAYLOAD),
             progress=False)
    assert (tmp_path / 'w.pth').read_bytes() == PAYLOAD and server.requests == []


def test_http_404_names_url_and_status(server, tmp_path):
    url = f'{server.url}/missing.pth'
    with pytest.raises(DownloadError, match=re.escape(url) + '.*HTTP 404'):
        download(url, tmp_path / 'missing.pth', progress=False)
    assert list(tmp_path.iterdir()) == []


def test_no_network_is_a_download_error(tmp_path):
    with pytest.raises(DownloadError, match=r'cannot reach 127\.0\.0\.1: .*no network\? use '
                                            r'--mirror URL or copy the file to'):
        download(closed_port_url() + '/w.pth', tmp_path / 'w.pth', progress=False, timeout=5)


def test_unknown_sha256_is_recorded_on_first_download(server, tmp_path, caplog):
    server.files['w.pth'] = PAYLOAD
    with caplog.at_level(logging.WARNING, logger='cityseg_ros.checkpoints'):
        dest = download(f'{server.url}/w.pth', tmp_path / 'w.pth', progress=False)
    record = tmp_path / 'w.pth.sha256'
    assert record.read_text() == f'{PAYLOAD_SHA}  w.pth\n'
    assert dest.read_bytes() == PAYLOAD
    assert 'recorded' in caplog.text and 'first download' in caplog.text


def test_verify_and_check_file(tmp_path):
    path = tmp_path / 'w.pth'
    wf = zoo.WeightsFile('w.pth', '', sha256=PAYLOAD_SHA, size=len(PAYLOAD))
    assert check_file(path, wf) == 'missing' and not verify(path, wf)
    path.write_bytes(PAYLOAD)
    assert verify(path, wf)
    path.write_bytes(PAYLOAD[:-1] + b'\0')
    assert 'sha256' in check_file(path, wf)
    path.write_bytes(PAYLOAD[:10])
    assert check_file(path, wf) == f'size 10 B, expected {len(PAYLOAD)} B'
    # No digest in the zoo: the one recorded on first download is the reference.
    unknown = zoo.WeightsFile('w.pth', '')
    assert verify(path, unknown)
    (tmp_path / 'w.pth.sha256').write_text(f'{PAYLOAD_SHA}  w.pth\n')
    assert not verify(path, unknown)


def test_weights_url_mirror_replaces_everything_up_to_the_file_name(monkeypatch):
    wf = zoo.WeightsFile('a b.pth', 'https://example.com/x/y/a%20b.pth')
    monkeypatch.delenv(checkpoints.MIRROR_ENV, raising=False)
    assert weights_url(wf) == wf.url
    assert weights_url(wf, 'http://lan/w/') == 'http://lan/w/a%20b.pth'
    monkeypatch.setenv(checkpoints.MIRROR_ENV, 'file:///mnt/w')
    assert weights_url(wf) == 'file:///mnt/w/a%20b.pth'
    monkeypatch.delenv(checkpoints.MIRROR_ENV)
    with pytest.raises(ZooError, match='no download URL'):
        weights_url(zoo.WeightsFile('c.pth', ''))


def test_fetch_downloads_once_then_uses_the_cache(monkeypatch, server, tmp_path):
    data = tiny_bytes(tmp_path)
    register_tiny(monkeypatch, data=data)
    server.files['tiny.pth'] = data
    cache = tmp_path / 'cache'
    path = fetch('tiny', cache=cache, mirror=server.url, progress=False)
    assert path == cache / 'tiny.pth' and path.read_bytes() == data
    assert fetch('tiny', cache=cache, mirror=server.url, progress=False) == path
    assert len(server.requests) == 1
    path.write_bytes(b'corrupted')  # a bad cached copy is replaced
    fetch('tiny', cache=cache, mirror=server.url, progress=False)
    assert path.read_bytes() == data and len(server.requests) == 2


def test_fetch_uses_mirror_from_environment_and_cache_env(monkeypatch, server, tmp_path):
    data = tiny_bytes(tmp_path)
    register_tiny(monkeypatch, data=data)
    server.files['tiny.pth'] = data
    monkeypatch.setenv(checkpoints.MIRROR_ENV, server.url + '/')
    monkeypatch.setenv('CITYSEG_ROS_CACHE', str(tmp_path / 'envcache'))
    assert fetch('tiny', progress=False) == tmp_path / 'envcache' / 'tiny.pth'


def test_fetch_rejects_unknown_file_and_unreleased_model(monkeypatch, tmp_path):
    register_tiny(monkeypatch, data=b'x')
    register_tiny(monkeypatch, name='untrained', weights=())
    with pytest.raises(ZooError, match='not a released file.*tiny.pth, tiny_wide.pth'):
        fetch('tiny', file='other.pth', cache=tmp_path)
    with pytest.raises(ZooError, match='no released weights'):
        fetch('untrained', cache=tmp_path)
    with pytest.raises(ZooError, match='unknown model'):
        fetch('nope', cache=tmp_path)


# --------------------------------------------------------------------------------------------
# Loading


def _tiny_model(monkeypatch, name='tiny', **kwargs) -> nn.Module:
    register_tiny(monkeypatch, name=name, data=b'', **kwargs)
    return zoo.build_model(name)


def test_state_dict_round_trips_strictly(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)
    state = tiny_state(1)
    torch.save(state, tmp_path / 'w.pth')
    load_checkpoint(model, tmp_path / 'w.pth')
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_legacy_format_loads_without_mmap(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)
    state = tiny_state(2)
    torch.save(state, tmp_path / 'w.pth', _use_new_zipfile_serialization=False)
    load_checkpoint(model, str(tmp_path / 'w.pth'))
    assert torch.equal(model.head.weight, state['head.weight'])


def test_fp16_checkpoint_loads_into_fp32_model(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_state(3).items()}
    torch.save(state, tmp_path / 'w16.pth')
    load_checkpoint(model, tmp_path / 'w16.pth')
    assert model.stem.weight.dtype == torch.float32
    assert torch.equal(model.stem.weight, state['stem.weight'].float())


def test_mismatch_names_model_file_and_first_bad_keys(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)
    state = tiny_state()
    del state['bn.weight']
    state['extra.weight'] = torch.zeros(1)
    state['head.weight'] = torch.zeros(2, 5, 1, 1)
    path = tmp_path / 'bad.pth'
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    text = str(info.value)
    assert str(path) in text and "zoo model 'tiny'" in text
    assert '1 missing keys (bn.weight)' in text
    assert '1 unexpected keys (extra.weight)' in text
    assert 'head.weight: file [2, 5, 1, 1] vs model [2, 4, 1, 1]' in text
    assert 'another model?' in text
    assert torch.count_nonzero(model.head.weight) > 0  # nothing was loaded


def test_checkpoint_of_another_model_lists_five_keys_and_its_owner(monkeypatch, tmp_path):
    register_tiny(monkeypatch, data=b'')
    model = _tiny_model(monkeypatch, name='other', url='https://example.invalid/other.pth')
    foreign = {f'model.layer{i}.weight': torch.zeros(1) for i in range(9)}
    path = tmp_path / 'tiny.pth'  # the file name of zoo model 'tiny''s release
    torch.save(foreign, path)
    with pytest.raises(CheckpointError, match='is this a checkpoint of another model') as info:
        load_checkpoint(model, path)
    text = str(info.value)
    assert 'model.layer4.weight, ... (+4 more)' in text and 'layer5' not in text
    assert "release of zoo model 'tiny'" in text


def test_wrong_variant_suggests_weights_for(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)  # width 4
    path = tmp_path / 'tiny_wide.pth'
    torch.save(tiny_state(width=8), path)
    with pytest.raises(CheckpointError, match=r"variant \{'width': 8\}.*weights_for"):
        load_checkpoint(model, path)
    wide = zoo.build_model('tiny', zoo.get_spec('tiny').weights_for(str(path)))
    load_checkpoint(wide, path)


def test_adapter_unwraps_wrapper_and_is_the_only_unwrapper(monkeypatch, tmp_path):
    state = tiny_state(4)
    torch.save({'state_dict': state, 'meta': {'epoch': 3}}, tmp_path / 'wrapped.pth')
    torch.save(state, tmp_path / 'flat.pth')

    plain = _tiny_model(monkeypatch)
    with pytest.raises(CheckpointError, match="wrapped checkpoint.*tensors under 'state_dict'.*"
                                              'does not unwrap it'):
        load_checkpoint(plain, tmp_path / 'wrapped.pth')
    with pytest.raises(CheckpointError, match='wrapped checkpoint'):
        load_state_dict(tmp_path / 'wrapped.pth')

    mmcv = _tiny_model(monkeypatch, name='mmcv_tiny', adapter=lambda ckpt: ckpt['state_dict'])
    load_checkpoint(mmcv, tmp_path / 'wrapped.pth')
    assert torch.equal(mmcv.head.weight, state['head.weight'])
    with pytest.raises(CheckpointError, match="key adapter of zoo model 'mmcv_tiny' cannot read"):
        load_checkpoint(mmcv, tmp_path / 'flat.pth')


def test_plain_module_without_zoo_name_loads_without_adapter(tmp_path):
    state = tiny_state(5)
    torch.save(state, tmp_path / 'w.pth')
    net = TinyNet()
    load_checkpoint(net, tmp_path / 'w.pth')
    assert torch.equal(net.bn.running_mean, state['bn.running_mean'])
    assert load_state_dict(tmp_path / 'w.pth').keys() == state.keys()


class _Arbitrary:
    """Not a tensor container: weights_only must refuse it."""

    def __init__(self):
        self.value = 1


def _zip_truncated(path):
    torch.save(tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BAD_FILES = {
    'random bytes': (lambda p: p.write_bytes(b'\x07' + os.urandom(4095)),
                     r'not a PyTorch checkpoint: it looks like unknown data \(first bytes 07 '),
    'png': (lambda p: p.write_bytes(b'\x89PNG\r\n\x1a\n' + os.urandom(200)),
            'not a PyTorch checkpoint: it looks like a PNG image'),
    'empty': (lambda p: p.write_bytes(b''), r'is empty \(0 bytes\)'),
    'truncated zip': (_zip_truncated, 'truncated or corrupt'),
    'arbitrary object': (lambda p: torch.save(_Arbitrary(), p),
                         r'tries to import the forbidden Python global '
                         r'test_checkpoints\._Arbitrary: .*must not be trusted'),
    'list': (lambda p: torch.save([torch.zeros(1)], p), 'holds a list, not a state dict'),
    'str': (lambda p: torch.save('weights', p), 'holds a str, not a state dict'),
    'int': (lambda p: torch.save(7, p), 'holds an int, not a state dict'),
    'non-tensor value': (lambda p: torch.save({'a': 1}, p), "entry 'a' is of type int"),
    'html page': (lambda p: p.write_text('<!DOCTYPE html><html>404</html>'), 'an HTML page'),
}


@pytest.mark.parametrize('kind', sorted(BAD_FILES))
def test_bad_file_gives_one_clear_checkpoint_error(monkeypatch, tmp_path, kind):
    make, message = BAD_FILES[kind]
    path = tmp_path / 'w.pth'
    make(path)
    model = _tiny_model(monkeypatch)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(model, path)
    assert str(path) in str(info.value) and '\n' not in str(info.value)


def test_missing_file_says_how_to_get_one(monkeypatch, tmp_path):
    model = _tiny_model(monkeypatch)
    with pytest.raises(CheckpointError, match=r'not found; run fetch_weights --model tiny or '
                                              r'pass a file'):
        load_checkpoint(model, tmp_path / 'absent.pth')


# --------------------------------------------------------------------------------------------
# The official ESPNetv2 files (../shared)


ESPNET_FILES = ['espnetv2_s_2.0_city_1024x512.pth', 'espnetv2_s_2.0_city_512x256.pth',
                'espnetv2_s_0.5_city_512x256.pth']


@pytest.mark.parametrize('filename', ESPNET_FILES)
def test_official_espnetv2_files_load_strictly(shared, filename):
    pytest.importorskip('cityseg_ros.models.espnetv2')
    path = shared('data', 'weights', 'espnetv2', filename)
    spec = zoo.get_spec('espnetv2')
    wf = spec.weights_for(str(path))
    assert wf is not None and verify(path, wf)
    model = zoo.build_model('espnetv2', wf)
    load_checkpoint(model, path)
    reference = torch.load(path, map_location='cpu', weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key].to(value.dtype)), key


def test_espnetv2_s05_file_into_default_model_names_the_variant(shared):
    pytest.importorskip('cityseg_ros.models.espnetv2')
    path = shared('data', 'weights', 'espnetv2', 'espnetv2_s_0.5_city_512x256.pth')
    with pytest.raises(CheckpointError, match=r"zoo model 'espnetv2'.*wrongly shaped.*"
                                              r"variant \{'s': 0.5\}"):
        load_checkpoint(zoo.build_model('espnetv2'), path)


def test_mmcv_meta_with_numpy_scalars_loads(tmp_path):
    """Load an mmcv meta with numpy scalars (EvalHook leaves them): plain numbers, not code."""
    import numpy as np
    path = tmp_path / 'mmcv.pth'
    torch.save({'meta': {'hook_msgs': {'best_score': np.float64(0.84), 'last_ckpt': 'x'},
                         'iter': np.int64(160000)},
                'state_dict': {'w': torch.ones(2)}}, path)
    state = checkpoints._read_checkpoint(path, 'fix')
    assert state['meta']['hook_msgs']['best_score'] == 0.84
    assert torch.equal(state['state_dict']['w'], torch.ones(2))
