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

"""fetch_weights: exit 0 and print paths on success; exit 2 with one stderr line otherwise."""

import errno
import hashlib
import os
from pathlib import Path
import subprocess
import sys

from cityseg_ros import checkpoints
from cityseg_ros.checkpoints import MIRROR_ENV
from cityseg_ros.models import zoo
from cityseg_ros.tools.fetch_weights import main
import pytest
# The local HTTP server and the tiny zoo entry live beside the library's own tests.
from test_checkpoints import (clear_proxies, closed_port_url, register_tiny, serving,
                              tiny_bytes)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    clear_proxies(monkeypatch)
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setenv('CITYSEG_ROS_CACHE', str(tmp_path / 'default_cache'))


@pytest.fixture
def server():
    with serving() as state:
        yield state


@pytest.fixture
def tiny(monkeypatch, tmp_path, server):
    """Zoo entry 'tiny' whose release is served by ``server``; returns (data, cache dir)."""
    data = tiny_bytes(tmp_path)
    register_tiny(monkeypatch, data=data)
    server.files['tiny.pth'] = data
    return data, tmp_path / 'cache'


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert lines[0].startswith('fetch_weights: error: ')
    return lines[0]


def test_fetch_prints_where_the_file_lives(capsys, server, tiny):
    data, cache = tiny
    code, out, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror',
                          server.url, '--quiet')
    assert code == 0 and err == ''
    assert out == f'tiny: {cache / "tiny.pth"}\n'
    assert (cache / 'tiny.pth').read_bytes() == data and not (cache / 'tiny.pth.part').exists()
    # Second run: already in the cache and verified, nothing downloaded.
    assert _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)[0] == 0
    assert len(server.requests) == 1


def test_mirror_and_cache_from_environment(capsys, monkeypatch, tmp_path, server, tiny):
    monkeypatch.setenv(MIRROR_ENV, server.url)
    code, out, _ = _cli(capsys, '--model', 'tiny', '--quiet')
    assert code == 0 and out.strip() == f'tiny: {tmp_path / "default_cache" / "tiny.pth"}'


def test_verify_ok_missing_and_corrupt(capsys, server, tiny):
    data, cache = tiny
    code, _, err = _cli(capsys, '--model', 'tiny', '--verify', '--cache-dir', cache)
    line = _one_error_line(err)
    assert code == 2 and 'tiny.pth (missing)' in line and 'run fetch_weights --model tiny' in line
    assert server.requests == []  # --verify never downloads

    cache.mkdir()
    (cache / 'tiny.pth').write_bytes(data)
    code, out, err = _cli(capsys, '--model', 'tiny', '--verify', '--cache-dir', cache)
    assert code == 0 and out == f'tiny: {cache / "tiny.pth"} ok\n' and err == ''

    (cache / 'tiny.pth').write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    code, _, err = _cli(capsys, '--model', 'tiny', '--verify', '--cache-dir', cache)
    assert code == 2 and 'sha256' in _one_error_line(err)


def test_wrong_checksum_exits_2_and_leaves_nothing(capsys, server, tiny):
    _, cache = tiny
    server.files['tiny.pth'] = b'not the released file'
    code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)
    line = _one_error_line(err)
    # The size is checked before the digest; both say the download was deleted.
    assert code == 2 and 'expected' in line and 'deleted' in line
    assert list(cache.iterdir()) == []


def test_sha256_mismatch_of_same_size_file(capsys, server, tiny):
    data, cache = tiny
    server.files['tiny.pth'] = bytes(len(data))
    code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)
    assert code == 2 and 'sha256 mismatch' in _one_error_line(err)
    assert list(cache.iterdir()) == []


def test_a_bad_file_in_the_cache_is_deleted_when_its_download_fails(capsys, server, tiny):
    """Before: a warning line in front of the error line, and the bad file stayed cached."""
    data, cache = tiny
    cache.mkdir()
    (cache / 'tiny.pth').write_bytes(bytes(len(data)))
    server.files['tiny.pth'] = b'not the released file'
    code, out, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror',
                          server.url)
    assert code == 2 and 'deleted' in _one_error_line(err)
    assert 'in the cache is bad' in out and list(cache.iterdir()) == []
    server.files['tiny.pth'] = data
    assert _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)[0] == 0
    assert (cache / 'tiny.pth').read_bytes() == data


def test_cut_download_exits_2_then_resumes(capsys, server, tiny):
    data, cache = tiny
    server.cut_after['tiny.pth'] = 100
    argv = ('--model', 'tiny', '--cache-dir', cache, '--mirror', server.url, '--quiet')
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and 'run again to resume' in _one_error_line(err)
    assert (cache / 'tiny.pth.part').stat().st_size == 100
    assert _cli(capsys, *argv)[0] == 0
    assert (cache / 'tiny.pth').read_bytes() == data
    assert server.requests[-1] == ('/tiny.pth', 'bytes=100-')


def test_404_exits_2(capsys, server, tiny):
    _, cache = tiny
    del server.files['tiny.pth']
    code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)
    assert code == 2 and 'HTTP 404' in _one_error_line(err)


def test_no_network_exits_2(capsys, tiny):
    _, cache = tiny
    code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror',
                        closed_port_url())
    assert code == 2 and 'cannot reach 127.0.0.1' in _one_error_line(err)


def test_unknown_sha256_is_recorded(capsys, monkeypatch, server, tmp_path):
    data = tiny_bytes(tmp_path)
    register_tiny(monkeypatch, data=data, sha256=None)
    server.files['tiny.pth'] = data
    cache = tmp_path / 'cache'
    code, _, _ = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url)
    assert code == 0
    digest = hashlib.sha256(data).hexdigest()
    assert (cache / 'tiny.pth.sha256').read_text().split()[0] == digest
    # From now on the recorded digest is what --verify checks against.
    (cache / 'tiny.pth').write_bytes(data[::-1])
    code, _, err = _cli(capsys, '--model', 'tiny', '--verify', '--cache-dir', cache)
    assert code == 2 and digest in _one_error_line(err)


def test_file_option_picks_another_release(capsys, server, tiny):
    _, cache = tiny
    server.files['tiny_wide.pth'] = b'wide'
    code, out, err = _cli(capsys, '--model', 'tiny', '--file', 'tiny_wide.pth',
                          '--cache-dir', cache, '--mirror', server.url, '--quiet')
    assert code == 0 and out.strip() == f"tiny: {cache / 'tiny_wide.pth'}", err


@pytest.mark.parametrize('argv, message', [
    ((), 'say which weights: --model M'),
    (('--model', 'nope'), "unknown model 'nope'"),
    (('--model', 'tiny', '--file', 'x.pth'), "x.pth is not a released file of 'tiny'"),
    (('--model', 'tiny', '--model', 'untrained'), 'untrained: no released weights'),
    # Before: OverflowError tracebacks from the socket and timer (int64 nanoseconds).
    (('--model', 'tiny', '--timeout', '1e308'), "'1e308' is more than 1e+09"),
    (('--model', 'tiny', '--deadline', '1e300'), "'1e300' is more than 1e+09"),
])
def test_bad_requests_exit_2_with_one_line(capsys, monkeypatch, tiny, argv, message):
    register_tiny(monkeypatch, name='untrained', weights=())
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in _one_error_line(err)


def test_all_reports_models_without_weights_and_fetches_the_rest(capsys, monkeypatch, server,
                                                                 tiny):
    data, cache = tiny
    register_tiny(monkeypatch, name='untrained', weights=())
    register_tiny(monkeypatch, name='private', url='')
    server.files['private.pth'] = b'served by the mirror only'
    only = {name: zoo.ZOO[name] for name in ('tiny', 'untrained', 'private')}
    monkeypatch.setattr(zoo, 'ZOO', only)
    code, out, err = _cli(capsys, '--all', '--cache-dir', cache, '--mirror', server.url,
                          '--quiet')
    assert code == 0, err
    assert f'tiny: {cache / "tiny.pth"}' in out
    assert 'untrained: no released weights' in out
    # Without a release URL, the mirror still serves it.
    assert f'private: {cache / "private.pth"}' in out


def test_all_without_mirror_skips_files_without_url(capsys, monkeypatch, tmp_path):
    register_tiny(monkeypatch, name='private', url='')
    monkeypatch.setattr(zoo, 'ZOO', {'private': zoo.ZOO['private']})
    code, out, err = _cli(capsys, '--all', '--cache-dir', tmp_path)
    assert code == 0 and err == ''
    assert 'private: private.pth has no download URL' in out and 'skipped' in out


def test_console_script_failure_is_one_line_without_traceback(tmp_path):
    env = dict(os.environ, CITYSEG_ROS_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    for var in ('http_proxy', 'HTTP_PROXY', 'all_proxy', 'ALL_PROXY', MIRROR_ENV):
        env.pop(var, None)
    result = subprocess.run(
        [sys.executable, '-m', 'cityseg_ros.tools.fetch_weights', '--model', 'espnetv2',
         '--mirror', closed_port_url()], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith('fetch_weights: error: cannot reach 127.0.0.1')
    assert result.stdout == ''


# --------------------------------------------------------------------------------------------
# Hostile input (issue 11, items 9, 10, 14): one line, exit 2, nothing unverified in the cache


def _hostile(case: str, server, cache: Path) -> list:
    """Set up ``case``; return the extra command-line arguments it needs."""
    if case == 'cache dir is a file':
        cache.write_bytes(b'')
    elif case == 'directory where the file goes':
        (cache / 'tiny.pth').mkdir(parents=True)
    elif case == 'directory where the .part goes':
        (cache / 'tiny.pth.part').mkdir(parents=True)
    elif case == 'server never stops':
        server.endless['tiny.pth'] = None
    elif case == 'server trickles':
        server.trickle['tiny.pth'] = 0.05
        return ['--deadline', '1']
    elif case == 'server trickles its headers':
        server.slow_headers['tiny.pth'] = 0.2
        return ['--timeout', '1']
    return []


@pytest.mark.parametrize('case, message', [
    ('invalid IPv6 mirror', "--mirror 'http://[::1/' is not a valid URL (Invalid IPv6 URL)"),
    ('cache dir is a file', 'is a file, not a directory'),
    ('directory where the file goes', 'is a directory where the downloaded file should go'),
    ('directory where the .part goes', 'tiny.pth.part: it is a directory; remove it'),
    ('server never stops', 'sent more than the expected'),
    ('server trickles', 'took longer than 1 s'),
    ('server trickles its headers', 'no response headers within 1 s'),
])
def test_hostile_input_exits_2_with_one_line(capsys, server, tiny, case, message):
    _, cache = tiny
    mirror = 'http://[::1/' if case == 'invalid IPv6 mirror' else server.url
    extra = _hostile(case, server, cache)
    code, out, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', mirror,
                          '--quiet', *extra)
    assert code == 2 and message in _one_error_line(err), err
    if cache.is_dir():
        left = sorted(p.name for p in cache.iterdir())
        assert left in ([], ['tiny.pth'], ['tiny.pth.part']), left  # only what was in the way
        assert not (cache / 'tiny.pth').is_file()


def test_disk_full_exits_2_and_leaves_no_partial_file(capsys, monkeypatch, server, tiny):
    _, cache = tiny

    def full(part, append):
        raise_later = checkpoints_open_part(part, append)

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                raise_later.close()

            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def flush(self):
                pass
        return Full()

    checkpoints_open_part = checkpoints._open_part
    monkeypatch.setattr(checkpoints, '_open_part', full)
    code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror', server.url,
                        '--quiet')
    assert code == 2 and 'No space left on device' in _one_error_line(err)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize('record', ['directory', 'garbage'])
def test_verify_fails_when_the_sha256_record_cannot_be_read(capsys, monkeypatch, tmp_path,
                                                            record):
    data = tiny_bytes(tmp_path)
    register_tiny(monkeypatch, data=data, sha256=None)
    cache = tmp_path / 'cache'
    cache.mkdir()
    (cache / 'tiny.pth').write_bytes(data[::-1])  # modified after its first download
    if record == 'directory':
        (cache / 'tiny.pth.sha256').mkdir()
    else:
        (cache / 'tiny.pth.sha256').write_text('unreadable\n')
    code, out, err = _cli(capsys, '--model', 'tiny', '--verify', '--cache-dir', cache)
    assert code == 2 and 'sha256 record' in _one_error_line(err) and 'ok' not in out


def test_cache_dir_without_write_permission_exits_2(capsys, monkeypatch, server, tiny):
    _, cache = tiny
    cache.mkdir()
    if os.geteuid() != 0:
        cache.chmod(0o555)
    else:  # root writes anywhere: the OS answer a user would get, for files in the cache
        real_open = os.open

        def denied(path, flags, *args, **kwargs):
            if Path(path).parent == cache and flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kwargs)
        monkeypatch.setattr(os, 'open', denied)
    try:
        code, _, err = _cli(capsys, '--model', 'tiny', '--cache-dir', cache, '--mirror',
                            server.url, '--quiet')
    finally:
        cache.chmod(0o755)
    assert code == 2 and 'Permission denied' in _one_error_line(err)
    assert list(cache.iterdir()) == []


def test_console_script_invalid_mirror_is_one_line(tmp_path):
    env = dict(os.environ, CITYSEG_ROS_CACHE=str(tmp_path), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, '-m', 'cityseg_ros.tools.fetch_weights', '--model', 'espnetv2',
         '--mirror', 'http://[::1/'], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count('\n') == 1 and 'Traceback' not in result.stderr
    assert result.stderr.startswith("fetch_weights: error: --mirror 'http://[::1/' is not")
    assert list(tmp_path.iterdir()) == []
