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

"""The package's exception classes: few and flat, each message says how to fix the problem."""


class CitysegError(Exception):
    """Base class: the CLIs catch this (and only this) and exit 2 with its message."""


class ZooError(CitysegError):
    """Unknown model name or a zoo entry that cannot serve the request."""


class CheckpointError(CitysegError):
    """A weights file is missing, corrupt, of another model, or failed its checksum."""


class DownloadError(CheckpointError):
    """A download failed: network, HTTP status, truncation or sha256 mismatch."""


class ImageError(CitysegError):
    """An input image cannot be used: unreadable, wrong dtype, too small, bad encoding."""


class BagError(CitysegError):
    """A rosbag2 cannot be read or lacks a topic the caller asked for."""


class ConfigError(CitysegError):
    """An option value that cannot work: unknown device, fp16 on CPU, bad input size."""
