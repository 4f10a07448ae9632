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

"""Segmentation networks and the zoo that names them (see DESIGN.md, "Contract: Python API")."""

from cityseg_ros.models.zoo import build_model, get_spec, model_names, ModelSpec, WeightsFile, ZOO


def load_checkpoint(model, path):
    """Load an official checkpoint strictly (:func:`cityseg_ros.checkpoints.load_checkpoint`)."""
    from cityseg_ros.checkpoints import load_checkpoint as _load
    return _load(model, path)


__all__ = ['build_model', 'get_spec', 'load_checkpoint', 'model_names', 'ModelSpec',
           'WeightsFile', 'ZOO']
