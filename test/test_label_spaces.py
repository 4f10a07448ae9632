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

from pathlib import Path

from cityseg_ros import labels, render
from cityseg_ros.errors import ConfigError
from cityseg_ros.label_spaces import (get_label_space, LABEL_SPACES, load_label_map,
                                      MAX_LABEL_MAP_BYTES)
import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / 'config' / 'label_map_example.yaml'


@pytest.fixture
def train_ids():
    ids = np.random.default_rng(0).integers(0, 19, (40, 60), dtype=np.uint8)
    ids[:4] = 255
    return ids


def test_trainid_space_is_the_identity_with_the_cityscapes_palette(train_ids):
    space = get_label_space()
    assert space.name == 'trainid' and space.ignore_id == 255 and space.is_identity
    mapped = space.map(train_ids)
    assert (mapped == train_ids).all() and not np.shares_memory(mapped, train_ids)
    assert (space.palette == labels.PALETTE).all()
    assert space.names[0] == 'road' and space.names[18] == 'bicycle'
    assert space.names[255] == 'ignore' and len(space.names) == 20


def test_labelid_space_is_the_official_table(train_ids):
    space = get_label_space('labelid')
    assert space.ignore_id == 0 and space.names[0] == 'unlabeled'
    mapped = space.map(train_ids)
    assert (mapped == labels.train_ids_to_label_ids(train_ids)).all()
    assert (mapped[:4] == 0).all()
    for lb in labels.LABELS:
        if 0 <= lb.train_id < 19:
            assert space.lut[lb.train_id] == lb.label_id
            assert space.names[lb.label_id] == lb.name
            assert tuple(space.palette[lb.label_id]) == lb.color
    # The round trip the official evaluation relies on.
    assert (labels.label_ids_to_train_ids(mapped)[4:] == train_ids[4:]).all()


def test_category_space_uses_official_cat_ids_with_void_as_ignore(train_ids):
    space = get_label_space('category')
    assert space.ignore_id == 0 and space.names[0] == 'void'
    by_name = {lb.name: lb for lb in labels.LABELS}
    for train_id, name in enumerate(labels.CLASS_NAMES):
        assert space.lut[train_id] == by_name[name].cat_id
        assert space.names[by_name[name].cat_id] == by_name[name].category
    assert space.lut[255] == 0 and (space.map(train_ids)[:4] == 0).all()
    # Each category's colour is its first class's: flat = road, object = pole, ...
    assert tuple(space.palette[1]) == by_name['road'].color
    assert tuple(space.palette[3]) == by_name['pole'].color
    assert tuple(space.palette[7]) == by_name['car'].color
    assert (space.palette[0] == 0).all()


def test_tables_are_read_only():
    space = get_label_space('labelid')
    with pytest.raises(ValueError):
        space.lut[0] = 1
    with pytest.raises(ValueError):
        space.palette[0] = 1


def test_map_is_one_lookup_for_any_shape():
    space = get_label_space('category')
    assert space.map(np.zeros((0, 5), np.uint8)).shape == (0, 5)
    strided = np.full((10, 20), 13, np.uint8)[:, ::2]
    assert (space.map(strided) == 7).all()
    with pytest.raises(ValueError, match='uint8'):
        space.map(np.zeros((2, 2), np.int32))


def test_train_palette_colours_train_ids_directly(train_ids):
    for name in LABEL_SPACES[:3]:
        space = get_label_space(name)
        direct = render.colorize(train_ids, palette=space.train_palette)
        via_ids = render.colorize(space.map(train_ids), palette=space.palette)
        assert (direct == via_ids).all(), name


def test_example_label_map_loads(train_ids):
    space = get_label_space(label_map=str(EXAMPLE))
    assert space.name == 'drivability' and space.ignore_id == 0
    assert space.lut[0] == 1 and space.lut[1] == 2 and space.lut[9] == 2  # road, sidewalk, terrain
    assert space.lut[10] == 6 and space.lut[255] == 0
    assert space.names == {0: 'unknown', 1: 'drivable', 2: 'walkable', 3: 'static obstacle',
                           4: 'person', 5: 'vehicle', 6: 'sky'}
    assert tuple(space.palette[5]) == (0, 0, 142)
    assert set(np.unique(space.map(train_ids))) <= set(space.names)
    assert get_label_space('label_map', str(EXAMPLE)).names == space.names


def _write(tmp_path, text):
    path = tmp_path / 'map.yaml'
    path.write_text(text)
    return path


GOOD_IGNORE = 'ignore: {id: 0, name: unknown, color: [0, 0, 0]}\n'


def test_unlisted_train_ids_map_to_ignore_and_ids_may_repeat(tmp_path):
    path = _write(tmp_path, GOOD_IGNORE + (
        'classes:\n'
        '  - {id: 7, name: car, color: [0, 0, 142], train_ids: [car]}\n'
        '  - {id: 7, name: car, color: [0, 0, 142], train_ids: [truck, 15]}\n'))
    space = load_label_map(path)
    assert space.name == 'map'
    assert space.lut[13] == space.lut[14] == space.lut[15] == 7
    assert space.lut[0] == 0 and space.lut[18] == 0 and space.lut[255] == 0


@pytest.mark.parametrize('text, reason', [
    ('', 'must be a mapping'),
    ('[1, 2]', 'must be a mapping'),
    ('ignore: [\n', 'not valid YAML'),
    ('classes: []\n', 'no ignore entry'),
    (GOOD_IGNORE, 'classes must be a non-empty list'),
    (GOOD_IGNORE + 'colours: 1\nclasses: []\n', 'unknown key'),
    ('ignore: {id: 0, name: x}\nclasses: []\n', "no 'color'"),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, color: [1, 2, 3], train_ids: [0]}\n', "no 'name'"),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3]}\n', 'train_ids'),
    (GOOD_IGNORE + 'classes:\n  - {id: 256, name: a, color: [1, 2, 3], train_ids: [0]}\n',
     '0..255'),
    (GOOD_IGNORE + 'classes:\n  - {id: -1, name: a, color: [1, 2, 3], train_ids: [0]}\n',
     '0..255'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1.5, name: a, color: [1, 2, 3], train_ids: [0]}\n',
     '0..255'),
    (GOOD_IGNORE + 'classes:\n  - {id: true, name: a, color: [1, 2, 3], train_ids: [0]}\n',
     '0..255'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 300], train_ids: [0]}\n',
     'color'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2], train_ids: [0]}\n', 'color'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3], train_ids: [19]}\n',
     'not a trainId'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3], train_ids: [255]}\n',
     'not a trainId'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3], train_ids: [roads]}\n',
     'not a trainId'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3], train_ids: [0]}\n'
     '  - {id: 2, name: b, color: [1, 2, 3], train_ids: [road]}\n', 'already mapped'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, color: [1, 2, 3], train_ids: [0]}\n'
     '  - {id: 1, name: b, color: [1, 2, 3], train_ids: [1]}\n', 'one id has one name'),
    (GOOD_IGNORE + 'classes:\n  - {id: 0, name: a, color: [1, 2, 3], train_ids: [0]}\n',
     'one id has one name'),
    (GOOD_IGNORE + 'classes:\n  - {id: 1, name: a, colour: [1, 2, 3], train_ids: [0]}\n',
     "no 'color'"),
    (GOOD_IGNORE + 'classes:\n  - [1, a]\n', 'must be a mapping'),
    ('a: &a [1, 1]\nb: &b [*a, *a]\nignore: *b\nclasses: *b\n', 'unknown key'),
    ('[' * 5000 + ']' * 5000, 'nests too deeply'),  # before: a RecursionError traceback
])
def test_bad_label_maps_are_refused_with_the_reason(tmp_path, text, reason):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=reason) as info:
        load_label_map(path)
    assert str(path) in str(info.value)


def test_label_map_file_checks(tmp_path):
    with pytest.raises(ConfigError, match='not found'):
        load_label_map(tmp_path / 'missing.yaml')
    with pytest.raises(ConfigError, match='not found'):
        load_label_map(tmp_path)
    big = tmp_path / 'big.yaml'
    big.write_text('#' * (MAX_LABEL_MAP_BYTES + 1))
    with pytest.raises(ConfigError, match='bytes'):
        load_label_map(big)
    binary = tmp_path / 'binary.yaml'
    binary.write_bytes(b'\xff\xfe\x00garbage')
    with pytest.raises(ConfigError, match='cannot be read'):
        load_label_map(binary)


def test_space_names_are_checked():
    with pytest.raises(ConfigError, match='unknown label space'):
        get_label_space('cityscapes')
    with pytest.raises(ConfigError, match='needs a label map file'):
        get_label_space('label_map')
    with pytest.raises(ConfigError, match='both given'):
        get_label_space('labelid', str(EXAMPLE))
