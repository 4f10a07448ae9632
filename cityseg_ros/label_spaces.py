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

"""Label spaces: which ids the published labels carry, their names and colours.

The engine always predicts Cityscapes trainIds (0..18, 255 = ignore). A :class:`LabelSpace`
turns them into the ids a consumer wants with one 256-entry lookup table:

- ``trainid``: the trainIds themselves; 255 = ignore; the Cityscapes palette.
- ``labelid``: the official labelIds (7 = road ... 33 = bicycle), as the official evaluation
  and ``*_gtFine_labelIds.png`` use them; ignore -> 0 'unlabeled'; official colours.
- ``category``: the official catIds, 1 = flat ... 7 = vehicle; ignore -> 0 'void' (catId 0,
  not evaluated). cityscapesScripts defines no category colours: each category takes the
  colour of its first class in the official table (flat: road, construction: building,
  object: pole, nature: vegetation, sky: sky, human: person, vehicle: car); void is black.
- a ``label_map`` YAML file: the user's own ids, names and colours (format below and in
  ``config/label_map_example.yaml``).

Label map YAML (a hostile input: size-capped, every field checked)::

    name: drivable                 # optional; default: the file's stem
    ignore: {id: 0, name: unknown, color: [0, 0, 0]}   # trainId 255 and unlisted trainIds
    classes:
      - {id: 1, name: drivable, color: [128, 64, 128], train_ids: [road, parking]}
      - {id: 2, name: obstacle, color: [220, 20, 60], train_ids: [11, 12, 13]}

``train_ids`` takes trainIds (0..18) or Cityscapes class names; several trainIds may map to
one id, and an id may appear in several entries when its name and colour agree. Each trainId
appears at most once. ids are 0..255.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from cityseg_ros.errors import ConfigError
from cityseg_ros.labels import (CATEGORY_NAMES, CLASS_NAMES, IGNORE_ID, LABELS, NUM_CLASSES,
                                PALETTE, TRAINID_TO_CATID, TRAINID_TO_ID)
import cv2
import numpy as np

__all__ = ['LABEL_SPACES', 'LabelSpace', 'get_label_space', 'load_label_map',
           'MAX_LABEL_MAP_BYTES']

#: Names accepted by :func:`get_label_space` ('label_map' needs a file).
LABEL_SPACES = ('trainid', 'labelid', 'category', 'label_map')
#: A label map is a few hundred bytes; anything beyond this is not one.
MAX_LABEL_MAP_BYTES = 64 * 1024


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class LabelSpace:
    """The ids published for each trainId, with names and colours.

    Attributes:
        name: 'trainid', 'labelid', 'category' or the label map's name.
        lut: uint8[256], trainId (0..18, 255) -> id in this space; ids never predicted map to
            the ignore id.
        ignore_id: the id of ignored / unmapped pixels.
        names: id -> name for every id this space can output (the ignore id included).
        palette: uint8[256, 3], id in this space -> RGB (ids without a colour are black).
    """

    name: str
    lut: np.ndarray
    ignore_id: int
    names: dict[int, str]
    palette: np.ndarray
    train_palette: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        if self.lut.shape != (256,) or self.lut.dtype != np.uint8:
            raise ValueError(f'lut must be uint8[256], got {self.lut.dtype} {self.lut.shape}')
        if self.palette.shape != (256, 3) or self.palette.dtype != np.uint8:
            raise ValueError(f'palette must be uint8[256, 3], got {self.palette.dtype} '
                             f'{self.palette.shape}')
        object.__setattr__(self, 'lut', _readonly(np.array(self.lut)))
        object.__setattr__(self, 'palette', _readonly(np.array(self.palette)))
        # trainId -> colour in one table: colorize(train_ids, palette=space.train_palette)
        # equals colorize(space.map(train_ids), palette=space.palette), without the map.
        object.__setattr__(self, 'train_palette', _readonly(self.palette[self.lut]))

    @property
    def is_identity(self) -> bool:
        """True when ids are the trainIds themselves (nothing to map)."""
        return bool((self.lut == np.arange(256)).all())

    def map(self, train_ids: np.ndarray) -> np.ndarray:  # noqa: A003 (the API's name)
        """Map an HxW uint8 trainId image to this space's ids (a new uint8 array).

        One table lookup (OpenCV's SIMD LUT): ~0.3 ms for 2048x1024.
        """
        train_ids = np.asarray(train_ids)
        if train_ids.dtype != np.uint8:
            raise ValueError(f'train_ids must be uint8, got {train_ids.dtype}')
        if train_ids.size == 0:
            return train_ids.copy()
        return cv2.LUT(np.ascontiguousarray(train_ids), self.lut).reshape(train_ids.shape)


def _trainid_space() -> LabelSpace:
    names = dict(enumerate(CLASS_NAMES))
    names[IGNORE_ID] = 'ignore'
    return LabelSpace('trainid', np.arange(256, dtype=np.uint8), IGNORE_ID, names, PALETTE)


def _labelid_space() -> LabelSpace:
    palette = np.zeros((256, 3), np.uint8)
    names = {0: 'unlabeled'}
    for lb in LABELS:
        if 0 <= lb.train_id < NUM_CLASSES:
            names[lb.label_id] = lb.name
            palette[lb.label_id] = lb.color
    return LabelSpace('labelid', TRAINID_TO_ID, 0, names, palette)


def _category_space() -> LabelSpace:
    lut = np.zeros(256, np.uint8)  # void (0) for 255 and anything unknown
    lut[:NUM_CLASSES] = TRAINID_TO_CATID[:NUM_CLASSES].astype(np.int64) + 1
    palette = np.zeros((256, 3), np.uint8)
    for cat_id in range(1, len(CATEGORY_NAMES) + 1):  # the category's first class
        first = int(np.flatnonzero(lut[:NUM_CLASSES] == cat_id)[0])
        palette[cat_id] = PALETTE[first]
    names = {0: 'void', **{i + 1: n for i, n in enumerate(CATEGORY_NAMES)}}
    return LabelSpace('category', lut, 0, names, palette)


_BUILTIN = {'trainid': _trainid_space, 'labelid': _labelid_space, 'category': _category_space}


def get_label_space(name: str = 'trainid', label_map: str = '') -> LabelSpace:
    """Return a built-in label space, or the one a label map YAML file describes.

    Args:
        name: one of :data:`LABEL_SPACES`. With ``label_map`` set, 'trainid' (the default)
            and 'label_map' both select the file.
        label_map: path of a label map YAML file, '' for none.

    Raises:
        ConfigError: unknown name, 'label_map' without a file, a file together with
            'labelid'/'category', or a bad file (see :func:`load_label_map`).
    """
    if name not in LABEL_SPACES:
        raise ConfigError(f'unknown label space {name!r}; use one of {", ".join(LABEL_SPACES)}')
    if label_map:
        if name not in ('trainid', 'label_map'):
            raise ConfigError(f'label space {name!r} and label map {label_map} both given; '
                              "set label_space to 'label_map' or clear label_map")
        return load_label_map(label_map)
    if name == 'label_map':
        raise ConfigError("label space 'label_map' needs a label map file (label_map "
                          'parameter / --label-map)')
    return _BUILTIN[name]()


_TRAIN_ID_BY_NAME = {n: i for i, n in enumerate(CLASS_NAMES)}


def _entry_id(entry: Any, where: str) -> tuple[int, str, tuple[int, int, int]]:
    """Validate ``{id, name, color}`` and return them."""
    if not isinstance(entry, dict):
        raise ConfigError(f'{where} must be a mapping with id, name and color, got '
                          f'{type(entry).__name__}')
    for key in ('id', 'name', 'color'):
        if key not in entry:
            raise ConfigError(f'{where} has no {key!r}')
    ident, name, color = entry['id'], entry['name'], entry['color']
    if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident <= 255:
        raise ConfigError(f'{where}: id must be an integer in 0..255, got {ident!r}')
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise ConfigError(f'{where}: name must be a non-empty string of at most 64 characters')
    if not isinstance(color, list) or len(color) != 3 or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 255 for c in color):
        raise ConfigError(f'{where}: color must be [r, g, b] with integers in 0..255, got '
                          f'{color!r}')
    return ident, name, (color[0], color[1], color[2])


def _train_id(value: Any, where: str) -> int:
    if isinstance(value, str) and value in _TRAIN_ID_BY_NAME:
        return _TRAIN_ID_BY_NAME[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < NUM_CLASSES:
        return value
    raise ConfigError(f'{where}: {value!r} is not a trainId (0..{NUM_CLASSES - 1}) or a '
                      f'Cityscapes class name ({", ".join(CLASS_NAMES)})')


def load_label_map(path: Union[str, Path]) -> LabelSpace:
    """Read and validate a label map YAML file (format in the module docstring).

    Raises:
        ConfigError: missing or oversized file, invalid YAML, unknown keys or trainIds, ids
            outside 0..255, missing fields, a trainId listed twice, or one id with two
            different names or colours; the message names the file and the entry.
    """
    import yaml

    path = Path(path)
    try:
        if not path.is_file():
            raise ConfigError(f'label map {path} not found (or not a file)')
        if path.stat().st_size > MAX_LABEL_MAP_BYTES:
            raise ConfigError(f'label map {path} is {path.stat().st_size} bytes; a label map is '
                              f'at most {MAX_LABEL_MAP_BYTES} bytes')
        text = path.read_bytes()[:MAX_LABEL_MAP_BYTES + 1].decode('utf-8')
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f'label map {path} cannot be read: {exc}') from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f'label map {path} is not valid YAML: '
                          f'{str(exc).splitlines()[0]}') from None
    except RecursionError:  # '[' * 5000 fits in 64 KiB; PyYAML's composer recurses per level
        raise ConfigError(f'label map {path} nests too deeply to be a label map') from None
    if not isinstance(doc, dict):
        raise ConfigError(f'label map {path} must be a mapping with ignore and classes')
    unknown = set(doc) - {'name', 'ignore', 'classes'}
    if unknown:
        raise ConfigError(f'label map {path}: unknown key(s) {", ".join(map(str, unknown))}; '
                          'allowed: name, ignore, classes')
    name = doc.get('name', path.stem)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f'label map {path}: name must be a non-empty string')
    if 'ignore' not in doc:
        raise ConfigError(f'label map {path} has no ignore entry ({{id, name, color}} for '
                          'trainId 255 and unlisted trainIds)')
    ignore_id, ignore_name, ignore_color = _entry_id(doc['ignore'], f'label map {path}: ignore')
    classes = doc.get('classes')
    if not isinstance(classes, list) or not classes:
        raise ConfigError(f'label map {path}: classes must be a non-empty list')
    if len(classes) > 256:
        raise ConfigError(f'label map {path}: {len(classes)} classes; at most 256')
    lut = np.full(256, ignore_id, np.uint8)
    palette = np.zeros((256, 3), np.uint8)
    names = {ignore_id: ignore_name}
    colors = {ignore_id: ignore_color}
    palette[ignore_id] = ignore_color
    seen: dict[int, int] = {}
    for index, entry in enumerate(classes):
        where = f'label map {path}: classes[{index}]'
        ident, cname, color = _entry_id(entry, where)
        extra = set(entry) - {'id', 'name', 'color', 'train_ids'}
        if extra:
            raise ConfigError(f'{where}: unknown key(s) {", ".join(map(str, extra))}')
        if ident in names and (names[ident], colors[ident]) != (cname, color):
            raise ConfigError(f'{where}: id {ident} is already {names[ident]!r} '
                              f'{list(colors[ident])}; one id has one name and one colour')
        train_ids = entry.get('train_ids')
        if not isinstance(train_ids, list) or not train_ids:
            raise ConfigError(f'{where}: train_ids must be a non-empty list of trainIds or '
                              'class names')
        for value in train_ids:
            train_id = _train_id(value, where)
            if train_id in seen:
                raise ConfigError(f'{where}: trainId {train_id} ({CLASS_NAMES[train_id]}) is '
                                  f'already mapped by classes[{seen[train_id]}]')
            seen[train_id] = index
            lut[train_id] = ident
        names[ident], colors[ident] = cname, color
        palette[ident] = color
    return LabelSpace(name.strip(), lut, ignore_id, names, palette)
