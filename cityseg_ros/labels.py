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

"""The official Cityscapes label table and the lookup tables built from it.

Source: cityscapesScripts ``cityscapesscripts/helpers/labels.py`` (the dataset's own definition).
trainIds 0..18 are the 19 evaluated classes; 255 marks pixels that are ignored in training and
evaluation. The license plate label (id -1) never appears in ``*_labelIds.png`` files.
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    'Label', 'LABELS', 'NUM_CLASSES', 'IGNORE_ID', 'CLASS_NAMES', 'CATEGORY_NAMES',
    'ID_TO_TRAINID', 'TRAINID_TO_ID', 'TRAINID_TO_CATID', 'PALETTE', 'INSTANCE_CLASSES',
    'label_ids_to_train_ids', 'train_ids_to_label_ids',
]


class Label(NamedTuple):
    """One row of the official table."""

    name: str
    label_id: int
    train_id: int
    category: str
    cat_id: int
    has_instances: bool
    ignore_in_eval: bool
    color: tuple[int, int, int]


LABELS: tuple[Label, ...] = (
    Label('unlabeled', 0, 255, 'void', 0, False, True, (0, 0, 0)),
    Label('ego vehicle', 1, 255, 'void', 0, False, True, (0, 0, 0)),
    Label('rectification border', 2, 255, 'void', 0, False, True, (0, 0, 0)),
    Label('out of roi', 3, 255, 'void', 0, False, True, (0, 0, 0)),
    Label('static', 4, 255, 'void', 0, False, True, (0, 0, 0)),
    Label('dynamic', 5, 255, 'void', 0, False, True, (111, 74, 0)),
    Label('ground', 6, 255, 'void', 0, False, True, (81, 0, 81)),
    Label('road', 7, 0, 'flat', 1, False, False, (128, 64, 128)),
    Label('sidewalk', 8, 1, 'flat', 1, False, False, (244, 35, 232)),
    Label('parking', 9, 255, 'flat', 1, False, True, (250, 170, 160)),
    Label('rail track', 10, 255, 'flat', 1, False, True, (230, 150, 140)),
    Label('building', 11, 2, 'construction', 2, False, False, (70, 70, 70)),
    Label('wall', 12, 3, 'construction', 2, False, False, (102, 102, 156)),
    Label('fence', 13, 4, 'construction', 2, False, False, (190, 153, 153)),
    Label('guard rail', 14, 255, 'construction', 2, False, True, (180, 165, 180)),
    Label('bridge', 15, 255, 'construction', 2, False, True, (150, 100, 100)),
    Label('tunnel', 16, 255, 'construction', 2, False, True, (150, 120, 90)),
    Label('pole', 17, 5, 'object', 3, False, False, (153, 153, 153)),
    Label('polegroup', 18, 255, 'object', 3, False, True, (153, 153, 153)),
    Label('traffic light', 19, 6, 'object', 3, False, False, (250, 170, 30)),
    Label('traffic sign', 20, 7, 'object', 3, False, False, (220, 220, 0)),
    Label('vegetation', 21, 8, 'nature', 4, False, False, (107, 142, 35)),
    Label('terrain', 22, 9, 'nature', 4, False, False, (152, 251, 152)),
    Label('sky', 23, 10, 'sky', 5, False, False, (70, 130, 180)),
    Label('person', 24, 11, 'human', 6, True, False, (220, 20, 60)),
    Label('rider', 25, 12, 'human', 6, True, False, (255, 0, 0)),
    Label('car', 26, 13, 'vehicle', 7, True, False, (0, 0, 142)),
    Label('truck', 27, 14, 'vehicle', 7, True, False, (0, 0, 70)),
    Label('bus', 28, 15, 'vehicle', 7, True, False, (0, 60, 100)),
    Label('caravan', 29, 255, 'vehicle', 7, True, True, (0, 0, 90)),
    Label('trailer', 30, 255, 'vehicle', 7, True, True, (0, 0, 110)),
    Label('train', 31, 16, 'vehicle', 7, True, False, (0, 80, 100)),
    Label('motorcycle', 32, 17, 'vehicle', 7, True, False, (0, 0, 230)),
    Label('bicycle', 33, 18, 'vehicle', 7, True, False, (119, 11, 32)),
    Label('license plate', -1, -1, 'vehicle', 7, False, True, (0, 0, 142)),
)

NUM_CLASSES = 19
IGNORE_ID = 255

_TRAIN_LABELS = sorted((lb for lb in LABELS if 0 <= lb.train_id < IGNORE_ID),
                       key=lambda lb: lb.train_id)

#: Class names in trainId order (index = trainId).
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS)

#: The 7 evaluated categories in catId order 1..7 (void, catId 0, is not evaluated).
CATEGORY_NAMES: tuple[str, ...] = ('flat', 'construction', 'object', 'nature', 'sky', 'human',
                                   'vehicle')

#: Classes whose GT carries instance ids (id >= 1000), in trainId order: the iIoU classes.
INSTANCE_CLASSES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN_LABELS if lb.has_instances)


def _lut(pairs, fill: int) -> np.ndarray:
    table = np.full(256, fill, dtype=np.uint8)
    for src, dst in pairs:
        table[src] = dst
    return table


#: uint8[256]: labelId -> trainId (255 for ignored and unknown ids).
ID_TO_TRAINID = _lut(((lb.label_id, lb.train_id) for lb in LABELS if lb.label_id >= 0), IGNORE_ID)

#: uint8[256]: trainId -> labelId (0 = unlabeled for 255 and anything else).
TRAINID_TO_ID = _lut(((lb.train_id, lb.label_id) for lb in _TRAIN_LABELS), 0)

#: uint8[256]: trainId -> catId - 1 (0..6), 255 for ignore.
TRAINID_TO_CATID = _lut(((lb.train_id, lb.cat_id - 1) for lb in _TRAIN_LABELS), IGNORE_ID)

#: uint8[256, 3]: trainId -> RGB colour; 255 (and anything unknown) is black.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:NUM_CLASSES] = [lb.color for lb in _TRAIN_LABELS]


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 labelId image (``*_gtFine_labelIds.png``) to trainIds, ignored ids -> 255."""
    return ID_TO_TRAINID[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a uint8 trainId image to labelIds, as the official evaluation expects predictions."""
    return TRAINID_TO_ID[train_ids]
