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

import csv

from cityseg_ros import labels
import numpy as np


def test_table_matches_official_csv_row_by_row(shared):
    with open(shared('reference', 'cityscapes_labels.csv'), newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(labels.LABELS)
    for row, label in zip(rows, labels.LABELS):
        assert label.name == row['name']
        assert label.label_id == int(row['id'])
        assert label.train_id == int(row['trainId'])
        assert label.category == row['category']
        assert label.cat_id == int(row['catId'])
        assert label.has_instances == (row['hasInstances'] == 'True')
        assert label.ignore_in_eval == (row['ignoreInEval'] == 'True')
        assert label.color == (int(row['color_r']), int(row['color_g']), int(row['color_b']))


def test_luts_round_trip_the_19_classes():
    train_ids = np.arange(labels.NUM_CLASSES, dtype=np.uint8)
    assert (labels.label_ids_to_train_ids(labels.train_ids_to_label_ids(train_ids))
            == train_ids).all()
    assert labels.CLASS_NAMES[0] == 'road' and labels.CLASS_NAMES[18] == 'bicycle'
    assert labels.INSTANCE_CLASSES == ('person', 'rider', 'car', 'truck', 'bus', 'train',
                                       'motorcycle', 'bicycle')


def test_ignored_and_unknown_ids_map_to_255():
    ignored = [lb.label_id for lb in labels.LABELS if lb.ignore_in_eval and lb.label_id >= 0]
    assert (labels.ID_TO_TRAINID[ignored] == 255).all()
    assert (labels.ID_TO_TRAINID[34:] == 255).all()
    assert labels.TRAINID_TO_ID[255] == 0
    assert (labels.PALETTE[255] == 0).all()


def test_category_lut_follows_the_table():
    for lb in labels.LABELS:
        if 0 <= lb.train_id < 255:
            assert labels.CATEGORY_NAMES[labels.TRAINID_TO_CATID[lb.train_id]] == lb.category
