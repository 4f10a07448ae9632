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


"""The default backend: the PyTorch module itself (the engine supplies autocast)."""

from typing import Callable, Optional

import torch
from torch import nn

__all__ = ['TorchBackend', 'check', 'create']


class TorchBackend:
    """Call the network; the reference every other backend is compared with."""

    name = 'torch'

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        self.net = net
        self.device = device

    @property
    def description(self) -> str:
        """One line for logs and /diagnostics."""
        return f'torch {torch.__version__}'

    def __str__(self) -> str:
        return self.description

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def close(self) -> None:
        """Nothing to free beyond what the engine frees."""


def check(device: torch.device, precision: str) -> None:
    """Accept everything: the engine has already checked device and precision."""


def create(net: nn.Module, spec, device: torch.device, precision: str,
           progress: Optional[Callable[[str], None]] = None) -> TorchBackend:
    """Wrap ``net``; every precision the engine accepts works through its autocast."""
    return TorchBackend(net, device)
