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

"""The launch file, the ament registration and the scripts, as a ROS user meets them.

Three layers: the launch logic as a pure function (:mod:`cityseg_ros.ros.launch_args`) and the
launch file's wiring against recording stand-ins of launch/launch_ros (always run); the ament
registration and the executables it writes (need the venv set up by scripts/setup.sh); and
the real ``ros2 launch``/``ros2 pkg``/``ros2 lifecycle`` (only where ROS 2 tools exist: a
sourced distro, or ``CITYSEG_ROS_TOOLS_ENV`` from scripts/ros_tools_env.sh).
"""

import importlib.util
import logging
import os
from pathlib import Path
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Dict, List, Optional
import uuid

from cityseg_ros.errors import ConfigError
from cityseg_ros.ros import launch_args
from cityseg_ros.ros.launch_args import plan_launch
from cityseg_ros.ros.params import NodeParams, PARAMS
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'segment.launch.py'
PARAMS_FILE = REPO / 'config' / 'segment.yaml'
RVIZ_FILE = REPO / 'rviz' / 'segment.rviz'
SHARED_WEIGHTS = REPO.parent / 'shared' / 'data' / 'weights' / 'espnetv2'


def _node_parameters() -> dict:
    document = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(document) == ['/**'], 'use the /**: ros__parameters: layout'
    return document['/**']['ros__parameters']


def test_params_file_lists_exactly_the_declared_parameters():
    assert list(_node_parameters()) == [p.name for p in PARAMS]


def test_params_file_values_are_the_defaults_and_valid():
    values = _node_parameters()
    for param in PARAMS:
        assert values[param.name] == param.default, param.name
        assert type(values[param.name]) is type(param.default), param.name  # 0.0 not 0
    NodeParams.from_values(values)  # passes the cross-field checks


def test_rviz_layout_parses_and_shows_inputs_outputs_and_points():
    layout = yaml.safe_load(RVIZ_FILE.read_text())
    displays = layout['Visualization Manager']['Displays']
    topics = {d['Topic']['Value']: d['Class'] for d in displays}
    assert topics['/stereo/left/image_rect_color'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/left/semantic/color'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/left/semantic/overlay'] == 'rviz_default_plugins/Image'
    assert topics['/stereo/semantic/points'] == 'rviz_default_plugins/PointCloud2'
    points = next(d for d in displays if d['Class'].endswith('PointCloud2'))
    assert points['Color Transformer'] == 'RGB8'


# --- the launch logic, without launch -------------------------------------------------------

def _values(params_file: Path, **given: str) -> Dict[str, str]:
    """Argument values as launch holds them: every default, then what was given."""
    values = {name: default for name, default, _ in launch_args.ARGUMENTS}
    values['params_file'] = str(params_file)
    values.update(given)
    return values


def test_plan_passes_the_params_file_alone_when_no_argument_is_given():
    plan = plan_launch(_values(PARAMS_FILE))
    assert plan.node_parameters() == [str(PARAMS_FILE)]
    assert plan.namespace == 'stereo' and plan.remappings == [] and not plan.rviz


def test_plan_passes_only_given_arguments_after_the_file():
    plan = plan_launch(_values(PARAMS_FILE, device='cpu', input_reliability='reliable'))
    # The file first, the command line after it (a later parameter source wins).
    assert plan.node_parameters() == [str(PARAMS_FILE),
                                      {'device': 'cpu', 'input_reliability': 'reliable'}]


@pytest.mark.parametrize('name', ['model', 'weights', 'device', 'input_reliability',
                                  'autostart'])
def test_plan_never_overrides_a_file_value_that_was_not_given(name):
    plan = plan_launch(_values(PARAMS_FILE))
    assert all(name not in entry for entry in plan.node_parameters()[1:])


def test_plan_quoted_empty_weights_mean_random_weights():
    # ros2 launch rejects `weights:=`; weights:="''" reaches launch as the two quote marks.
    plan = plan_launch(_values(PARAMS_FILE, weights="''"))
    assert plan.parameters == {'weights': ''}


def test_plan_remaps_only_the_topics_that_were_given():
    plan = plan_launch(_values(PARAMS_FILE, left_image='/zed/left/image_rect_color'))
    assert plan.remappings == [('left/image_rect_color', '/zed/left/image_rect_color')]


def test_plan_without_rviz2_skips_rviz_with_a_warning():
    plan = plan_launch(_values(PARAMS_FILE, rviz='true'), rviz_executable=None)
    assert not plan.rviz
    assert len(plan.warnings) == 1 and 'rviz2 is not installed' in plan.warnings[0]


def test_plan_with_rviz2_starts_it():
    plan = plan_launch(_values(PARAMS_FILE, rviz='True'), rviz_executable='/opt/rviz2')
    assert plan.rviz and not plan.warnings


def test_plan_rejects_a_missing_params_file_before_starting_anything(tmp_path):
    with pytest.raises(ConfigError, match='params_file .*missing.yaml.* does not exist'):
        plan_launch(_values(tmp_path / 'missing.yaml'))


def test_plan_rejects_a_rviz_value_that_is_not_a_boolean():
    with pytest.raises(ConfigError, match='rviz:=true or rviz:=false'):
        plan_launch(_values(PARAMS_FILE, rviz='maybe'))


def _fake_package(prefix: Path, package: str, executable: Optional[str]) -> None:
    index = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    index.mkdir(parents=True, exist_ok=True)
    (index / package).write_text('')
    if executable:
        path = prefix / 'lib' / package / executable
        path.parent.mkdir(parents=True)
        path.write_text('#!/bin/sh\n')
        path.chmod(0o755)


def test_find_executable_follows_the_ament_index(tmp_path):
    with_rviz, without_exe, other = tmp_path / 'a', tmp_path / 'b', tmp_path / 'c'
    _fake_package(with_rviz, 'rviz2', 'rviz2')
    _fake_package(without_exe, 'rviz2', None)
    _fake_package(other, 'other', 'x')
    found = launch_args.find_executable('rviz2', 'rviz2', os.pathsep.join([str(other),
                                                                          str(with_rviz)]))
    assert found == str(with_rviz / 'lib' / 'rviz2' / 'rviz2')
    # The first prefix with the package wins, as in ament_index_python.
    assert launch_args.find_executable(
        'rviz2', 'rviz2', os.pathsep.join([str(without_exe), str(with_rviz)])) is None
    assert launch_args.find_executable('rviz2', 'rviz2', str(other)) is None
    assert launch_args.find_executable('rviz2', 'rviz2', '') is None


# --- the launch file's wiring, against recording stand-ins of launch and launch_ros ----------

class _Recorded:
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration:
    def __init__(self, name: str) -> None:
        self.name = name

    def perform(self, context: dict) -> str:
        return context[self.name]


class _FindPackageShare:
    def __init__(self, package: str) -> None:
        self.package = package

    def perform(self, context: dict) -> str:
        return f'/share/{self.package}'


class _ParameterValue:
    def __init__(self, value, value_type=None) -> None:
        self.value, self.value_type = value, value_type

    def __eq__(self, other) -> bool:
        return (self.value, self.value_type) == (other.value, other.value_type)


def _stand_in_launch(monkeypatch) -> types.ModuleType:
    """Load segment.launch.py with launch/launch_ros replaced by recording stand-ins."""
    def module(name: str, **attrs) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    logging_mod = module('launch.logging', get_logger=logging.getLogger)
    module('launch', LaunchDescription=list, logging=logging_mod)
    module('launch.actions', DeclareLaunchArgument=_Recorded, OpaqueFunction=_Recorded)
    module('launch.substitutions', LaunchConfiguration=_LaunchConfiguration,
           PathJoinSubstitution=_Recorded)
    module('launch_ros')
    module('launch_ros.actions', Node=_Recorded)
    module('launch_ros.parameter_descriptions', ParameterValue=_ParameterValue)
    module('launch_ros.substitutions', FindPackageShare=_FindPackageShare)
    spec = importlib.util.spec_from_file_location('segment_launch_stand_in', LAUNCH_FILE)
    launch_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_module)
    return launch_module


def _launch_nodes(monkeypatch, tmp_path, **given: str) -> List[_Recorded]:
    """Run the launch file's description and its OpaqueFunction; return the Node actions."""
    description = _stand_in_launch(monkeypatch).generate_launch_description()
    declared = {a.args[0]: a.kwargs['default_value'] for a in description[:-1]}
    assert list(declared) == [name for name, _, _ in launch_args.ARGUMENTS]
    context = {**declared, 'params_file': str(PARAMS_FILE), **given}
    return description[-1].kwargs['function'](context)


def test_launch_file_passes_the_file_then_only_the_given_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    default, = _launch_nodes(monkeypatch, tmp_path)
    assert default.kwargs['parameters'] == [str(PARAMS_FILE)]  # autostart not forced
    assert default.kwargs['executable'] == 'segment_node'
    assert default.kwargs['namespace'] == 'stereo' and default.kwargs['remappings'] == []
    given, = _launch_nodes(monkeypatch, tmp_path, weights="''", device='cpu',
                           right_image='/cam/right')
    assert given.kwargs['parameters'] == [
        str(PARAMS_FILE),
        {'weights': _ParameterValue('', str), 'device': _ParameterValue('cpu', str)}]
    assert given.kwargs['remappings'] == [('right/image_rect_color', '/cam/right')]


def test_launch_file_adds_rviz_only_when_rviz2_is_installed(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    with caplog.at_level(logging.WARNING):
        nodes = _launch_nodes(monkeypatch, tmp_path, rviz='true')
    assert [n.kwargs['executable'] for n in nodes] == ['segment_node']
    assert 'rviz2 is not installed' in caplog.text
    _fake_package(tmp_path, 'rviz2', 'rviz2')
    nodes = _launch_nodes(monkeypatch, tmp_path, rviz='true')
    assert [n.kwargs['executable'] for n in nodes] == ['segment_node', 'rviz2']
    assert nodes[1].kwargs['arguments'] == ['-d', '/share/cityseg_ros/rviz/segment.rviz']


def test_launch_file_builds_its_description_with_the_real_launch_ros():
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ROS 2 distro; '
                        'the PyPI wheels lack it): the launch file cannot be loaded')
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    spec = importlib.util.spec_from_file_location('segment_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    arguments = [e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert arguments == [name for name, _, _ in launch_args.ARGUMENTS]
    assert isinstance(description.entities[-1], OpaqueFunction)


# --- ament registration (scripts/ament_register.sh, run by scripts/setup.sh) -----------------

def _venv_ready() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip('not running in a venv: scripts/setup.sh registers the package in one')


def _console_scripts() -> List[str]:
    from importlib.metadata import distribution
    return sorted(ep.name for ep in distribution('cityseg_ros').entry_points
                  if ep.group == 'console_scripts')


def _check_registered(prefix: Path) -> None:
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    old = os.environ.get('AMENT_PREFIX_PATH')
    os.environ['AMENT_PREFIX_PATH'] = str(prefix)
    try:
        assert Path(get_package_prefix('cityseg_ros')) == prefix
        share = Path(get_package_share_directory('cityseg_ros'))
    finally:
        if old is None:
            del os.environ['AMENT_PREFIX_PATH']
        else:
            os.environ['AMENT_PREFIX_PATH'] = old
    # Links into the checkout: edits show without reinstalling.
    for relative in ('package.xml', 'launch/segment.launch.py', 'config/segment.yaml',
                     'rviz/segment.rviz'):
        assert (share / relative).resolve() == (REPO / relative).resolve(), relative
    lib = prefix / 'lib' / 'cityseg_ros'
    assert sorted(p.name for p in lib.iterdir()) == _console_scripts()
    assert all(os.access(p, os.X_OK) for p in lib.iterdir())


def test_setup_registered_the_venv_in_the_ament_index():
    _venv_ready()
    marker = Path(sys.prefix, 'share', 'ament_index', 'resource_index', 'packages',
                  'cityseg_ros')
    assert marker.is_file(), 'run ./scripts/setup.sh: it registers cityseg_ros in .venv'
    _check_registered(Path(sys.prefix))


def _env(**extra: str) -> Dict[str, str]:
    """Return this process's environment for a child, with Jazzy's discovery setting only."""
    env = dict(os.environ)
    env.pop('ROS_LOCALHOST_ONLY', None)  # deprecated on Jazzy: rcl warns twice per process
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.update(extra)
    return env


def _register(prefix: Path) -> None:
    env = _env(PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}')
    result = subprocess.run(['bash', str(REPO / 'scripts' / 'ament_register.sh'), str(prefix)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_ament_register_writes_index_share_links_and_executables(tmp_path):
    _venv_ready()
    _register(tmp_path)
    _check_registered(tmp_path)
    _register(tmp_path)  # idempotent
    _check_registered(tmp_path)


class _Output:
    """Collect a process's merged output on a thread; wait for a pattern in it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return ''.join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return True
            if self.proc.poll() is not None:
                self._thread.join(5)
                return bool(re.search(pattern, self.text))
            time.sleep(0.1)
        return False


def _pids_with(token: str) -> List[int]:
    """Pids of the processes whose command line contains ``token`` (e.g. a unique namespace)."""
    pids = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / 'cmdline').read_bytes().replace(b'\0', b' ').decode()
            except OSError:
                continue
            if token in cmdline:
                pids.append(int(entry.name))
    return pids


def _wait_gone(token: str, timeout: float) -> List[int]:
    deadline = time.monotonic() + timeout
    while _pids_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _pids_with(token)


def _small_params(path: Path, **extra) -> Path:
    values = {'weights': '', 'device': 'cpu', 'input_height': 64, 'input_width': 128, **extra}
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': values}}))
    return path


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc and prctl are Linux')
def test_registered_node_runs_under_another_venvs_ros_and_dies_with_its_parent(tmp_path):
    """What ros2 launch from another Python does to lib/cityseg_ros/segment_node."""
    _venv_ready()
    _register(tmp_path)
    namespace = f'reg_{uuid.uuid4().hex[:8]}'
    node = tmp_path / 'lib' / 'cityseg_ros' / 'segment_node'
    # The caller has bootstrapped *its* ROS libraries (none of ours) and then dies by SIGKILL.
    env = _env(_ROS_WHEELS_BOOTSTRAP_COMPLETE='1', LD_LIBRARY_PATH='')
    parent = subprocess.Popen(
        [sys.executable, '-c', 'import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); '
         'time.sleep(300)', str(node), '--ros-args', '-r', f'__ns:=/{namespace}',
         '--params-file', str(_small_params(tmp_path / 'p.yaml'))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _Output(parent)
    try:
        assert output.wait_for(r'\bactive\b', 120), output.text
        assert _pids_with(f'__ns:=/{namespace}')
    finally:
        parent.kill()
        parent.wait()
    assert not _wait_gone(f'__ns:=/{namespace}', 20), 'segment_node outlived its parent'


def test_env_sh_sets_no_deprecated_localhost_only(tmp_path):
    if not (REPO / '.venv' / 'bin' / 'activate').is_file():
        pytest.skip('no .venv: run ./scripts/setup.sh')
    env = {k: v for k, v in os.environ.items() if k == 'ROS_DOMAIN_ID' or
           not k.startswith(('ROS_', 'AMENT_', 'VIRTUAL_ENV', '_ROS_WHEELS', 'LD_LIBRARY'))}
    script = ('. scripts/env.sh && env | grep -E "^(ROS_|AMENT_PREFIX_PATH)" && python -c "'
              "import rclpy; rclpy.init(); rclpy.create_node('env_check').destroy_node(); "
              'rclpy.shutdown()"')
    result = subprocess.run(['bash', '-c', script], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'ROS_LOCALHOST_ONLY' not in result.stdout
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST' in result.stdout
    assert f'AMENT_PREFIX_PATH={REPO / ".venv"}' in result.stdout
    assert 'ROS_LOCALHOST_ONLY is deprecated' not in result.stderr, result.stderr


# --- the real ROS 2 tools (ros2 launch/pkg/lifecycle/param) -----------------------------------

def _ros_tools() -> Dict[str, str]:
    """Environment with a ``ros2`` that has the launch verb, or skip."""
    tools = os.environ.get('CITYSEG_ROS_TOOLS_ENV')
    env = _env()
    env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE', None)  # the tools' Python bootstraps its own
    if tools:
        tools_dir = Path(tools)
        env['PATH'] = f'{tools_dir / "bin"}{os.pathsep}{env["PATH"]}'
        env['AMENT_PREFIX_PATH'] = os.pathsep.join(
            [str(tools_dir), sys.prefix, *filter(None, env.get('AMENT_PREFIX_PATH', '')
                                                 .split(os.pathsep))])
        env.pop('VIRTUAL_ENV', None)
    ros2 = shutil.which('ros2', path=env['PATH'])
    if ros2 is None or subprocess.run([ros2, 'launch', '-h'], env=env, capture_output=True,
                                      timeout=60).returncode != 0:
        pytest.skip('no ROS 2 command-line tools with launch: source a ROS 2 distro, or build '
                    'them with scripts/ros_tools_env.sh and set CITYSEG_ROS_TOOLS_ENV')
    env['CITYSEG_ROS2'] = ros2
    return env


#: ros2 verbs that look up a node: no daemon left behind, time to discover the node.
NO_DAEMON = ('--no-daemon', '--spin-time', '3')


def _ros2(env: Dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([env['CITYSEG_ROS2'], *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


class _Launch:
    """``ros2 launch cityseg_ros segment.launch.py ARGS`` in a unique namespace."""

    def __init__(self, env: Dict[str, str], *args: str) -> None:
        self.namespace = f'launch_{uuid.uuid4().hex[:8]}'
        self.node = f'/{self.namespace}/segment_node'
        self.proc = subprocess.Popen(
            [env['CITYSEG_ROS2'], 'launch', 'cityseg_ros', 'segment.launch.py',
             f'namespace:={self.namespace}', *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = _Output(self.proc)

    def stop(self) -> int:
        """Ctrl-C, as a terminal does; return launch's exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def leftovers(self) -> List[int]:
        return _wait_gone(f'__ns:=/{self.namespace}', 20)


def test_ros2_pkg_finds_the_package_after_setup():
    _venv_ready()
    env = _ros_tools()
    prefix = _ros2(env, 'pkg', 'prefix', 'cityseg_ros')
    assert prefix.returncode == 0 and Path(prefix.stdout.strip()) == Path(sys.prefix), \
        prefix.stdout + prefix.stderr
    executables = _ros2(env, 'pkg', 'executables', 'cityseg_ros').stdout.split('\n')
    assert 'cityseg_ros segment_node' in executables


def test_ros2_launch_honours_params_file_and_given_arguments(tmp_path):
    env = _ros_tools()
    params = _small_params(tmp_path / 'p.yaml', model='hrnet_w48_ocr', autostart=False,
                           input_reliability='reliable')
    launch = _Launch(env, f'params_file:={params}', 'model:=espnetv2')
    try:
        assert launch.output.wait_for('process started', 60), launch.output.text
        state = ''
        deadline = time.monotonic() + 120
        while 'unconfigured' not in state and time.monotonic() < deadline:
            state = _ros2(env, 'lifecycle', 'get', launch.node, *NO_DAEMON).stdout
        assert 'unconfigured' in state, launch.output.text  # autostart: false holds
        dump = _ros2(env, 'param', 'dump', launch.node, *NO_DAEMON)
        values = yaml.safe_load(dump.stdout)[launch.node]['ros__parameters']
        assert values['weights'] == '' and values['device'] == 'cpu'  # the file's
        assert values['input_reliability'] == 'reliable' and values['autostart'] is False
        assert values['model'] == 'espnetv2'  # the command line wins over the file
        configure = _ros2(env, 'lifecycle', 'set', launch.node, 'configure', *NO_DAEMON,
                          timeout=180)
        assert 'Transitioning successful' in configure.stdout, \
            configure.stdout + launch.output.text
    finally:
        code = launch.stop()
    assert code == 0, launch.output.text
    assert not launch.leftovers()


def test_ros2_launch_rviz_without_rviz2_warns_and_leaves_nothing_running(tmp_path):
    env = _ros_tools()
    if launch_args.find_executable('rviz2', 'rviz2', env['AMENT_PREFIX_PATH']):
        pytest.skip('rviz2 is installed here')
    launch = _Launch(env, f'params_file:={_small_params(tmp_path / "p.yaml", autostart=False)}',
                     'rviz:=true')
    try:
        assert launch.output.wait_for('process started', 60), launch.output.text
        assert 'rviz2 is not installed' in launch.output.text
    finally:
        code = launch.stop()
    assert code == 0, launch.output.text
    assert not launch.leftovers()


@pytest.mark.parametrize('how', ['sigterm', 'bad_argument'])
def test_ros2_launch_that_dies_or_fails_leaves_nothing_running(tmp_path, how):
    env = _ros_tools()
    params = _small_params(tmp_path / 'p.yaml', autostart=False)
    if how == 'bad_argument':  # fails while building the actions: before any process starts
        launch = _Launch(env, f'params_file:={params}', 'rviz:=maybe')
        assert launch.proc.wait(timeout=60) != 0
        assert 'rviz:=true or rviz:=false' in launch.output.text or launch.output.wait_for(
            'rviz:=true or rviz:=false', 5)
    else:  # `timeout` sends SIGTERM: launch exits without stopping its processes
        launch = _Launch(env, f'params_file:={params}')
        assert launch.output.wait_for('process started', 60), launch.output.text
        launch.proc.terminate()
        launch.proc.wait(timeout=60)
    assert not launch.leftovers(), launch.output.text


@pytest.mark.slow
@pytest.mark.parametrize('reliability', ['reliable', 'best_effort'])
def test_ros2_launch_defaults_segment_a_2048x1024_stereo_stream(tmp_path, reliability):
    """The default launch and a camera-like publisher process: outputs keep coming."""
    env = _ros_tools()
    args = []
    if SHARED_WEIGHTS.is_dir():  # weights: auto (the default) finds the official file here
        env['CITYSEG_ROS_CACHE'] = str(SHARED_WEIGHTS)
    else:
        args.append("weights:=''")
    launch = _Launch(env, *args)
    try:
        player = subprocess.run(
            [sys.executable, '-m', 'cityseg_ros.ros.demo', '--node', 'none', '--namespace',
             launch.namespace, '--synthetic', '1024x2048', '--rate', '1', '--frames', '6',
             '--player-reliability', reliability, '--save', '0', '--out', str(tmp_path),
             '--timeout', '300'],  # model loading on a busy 2-core machine
            env=_env(), capture_output=True, text=True, timeout=500)
    finally:
        launch.stop()
    assert player.returncode == 0, player.stdout + player.stderr + launch.output.text
    segmented = int(re.search(r'pairs segmented \(labels received\) \| (\d+)',
                              player.stdout).group(1))
    assert segmented >= 2, player.stdout + launch.output.text
    assert not launch.leftovers()
