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

"""evaluate: make_bag + evaluate equals segment_images + the official evaluator; CLI errors."""

import csv
import json
import math
from pathlib import Path

from cityseg_ros.bags import (BagWriter, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE)
from cityseg_ros.evaluation import OUTPUT_FILES
from cityseg_ros.labels import CATEGORY_NAMES, CLASS_NAMES, ID_TO_TRAINID, INSTANCE_CLASSES
from cityseg_ros.tools import evaluate, make_bag, segment_images
import numpy as np
import pytest

PRED = '/stereo/left/semantic/labels'
START = 1_600_000_000_000_000_000
PERIOD = 58_823_529
REAL_FRAMES = 8
TINY = ['--weights', 'none', '--device', 'cpu', '--input-size', '64x128']
LABEL_IDS = np.array([7, 8, 11, 21, 23, 24, 26, 33, 4], np.uint8)


def _run(capsys, tool, *argv):
    code = tool.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _metrics(out):
    return json.loads((out / 'metrics.json').read_text())


def _rows(out):
    with (out / 'frames.csv').open(newline='') as handle:
        return [(int(r['stamp_ns']), r['pixel_accuracy'], r['miou'])
                for r in csv.DictReader(handle)]


def _write_bag(path, count, seed=0, height=64, width=128, skip_gt=(), storage='mcap',
               pred=lambda gt, index: ID_TO_TRAINID[gt]):
    """Write a bag in the make_bag layout plus a predictions topic; return the stamps."""
    rng = np.random.default_rng(seed)
    stamps = []
    with BagWriter(path, storage=storage) as bag:
        for index in range(count):
            stamp = START + index * PERIOD
            stamps.append(stamp)
            gt = np.kron(LABEL_IDS[rng.integers(0, len(LABEL_IDS), (height // 8, width // 8))],
                         np.ones((8, 8), np.uint8))
            inst = np.where(gt >= 24, gt.astype(np.uint16) * 1000 + index, gt).astype(np.uint16)
            left = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            bag.write_image(TOPIC_LEFT_IMAGE, left, 'rgb8', stamp, 'left')
            if index not in skip_gt:
                bag.write_image(TOPIC_GT_LABEL_IDS, gt, 'mono8', stamp, 'left')
                bag.write_image(TOPIC_GT_INSTANCE_IDS, inst, 'mono16', stamp, 'left')
            bag.write_image(PRED, pred(gt, index).astype(np.uint8), 'mono8', stamp, 'left')
    return stamps


# -- acceptance: the same numbers as the official evaluator ---------------------------------

@pytest.fixture(scope='module')
def official_scores(tmp_path_factory, cityscapes_root, espnetv2_weights, official_eval):
    """segment_images on the real train frames, scored by cityscapesscripts."""
    images = sorted((cityscapes_root / 'leftImg8bit' / 'train').rglob('*_leftImg8bit.png'))
    assert len(images) == REAL_FRAMES
    out = tmp_path_factory.mktemp('segment_images')
    code = segment_images.main([
        '--model', 'espnetv2', '--weights', str(espnetv2_weights), '--device', 'cpu',
        '--out', str(out), '--label-ids', '--no-train-ids', '--quiet', *map(str, images)])
    assert code == 0
    gts = [cityscapes_root / 'gtFine' / 'train' / p.parent.name /
           p.name.replace('_leftImg8bit.png', '_gtFine_labelIds.png') for p in images]
    return official_eval([out / (p.stem + '_labelIds.png') for p in images], gts)


def _close(ours, official):
    if ours is None:
        return math.isnan(official)
    return abs(ours - official) <= 1e-9


@pytest.mark.slow
@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_evaluation_equals_segment_images_and_the_official_evaluator(
        tmp_path, capsys, storage, cityscapes_root, espnetv2_weights, official_scores):
    bag = tmp_path / 'bag'
    code, _, err = _run(capsys, make_bag, '--cityscapes-root', cityscapes_root, '--split',
                        'train', '--out', bag, '--storage', storage, '--no-progress')
    assert code == 0, err
    out = tmp_path / 'eval'
    code, stdout, err = _run(capsys, evaluate, '--bag', bag, '--model', 'espnetv2',
                             '--weights', espnetv2_weights, '--device', 'cpu', '--out', out,
                             '--quiet')
    assert code == 0, err
    metrics = _metrics(out)
    print(f'{storage}: {stdout.strip()}')
    assert metrics['frames'] == REAL_FRAMES and not metrics['skipped']
    assert not metrics['partial'] and metrics['model']['name'] == 'espnetv2'
    official = official_scores
    for ours, theirs in [('miou', 'averageScoreClasses'), ('iiou', 'averageScoreInstClasses'),
                         ('miou_category', 'averageScoreCategories'),
                         ('iiou_category', 'averageScoreInstCategories')]:
        assert _close(metrics[ours], official[theirs]), (ours, metrics[ours], official[theirs])
    for name in CLASS_NAMES:
        assert _close(metrics['class_iou'][name], official['classScores'][name]), name
    for name in INSTANCE_CLASSES:
        assert _close(metrics['class_iiou'][name], official['classInstScores'][name]), name
    for name in CATEGORY_NAMES:
        assert _close(metrics['category_iou'][name], official['categoryScores'][name]), name
    for name in ('human', 'vehicle'):
        assert _close(metrics['category_iiou'][name], official['categoryInstScores'][name])
    assert metrics['miou'] >= 0.55
    assert all((out / name).is_file() for name in OUTPUT_FILES)


# -- recorded predictions, shards, merge ----------------------------------------------------

def test_recorded_perfect_predictions_score_one(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 4)
    out = tmp_path / 'out'
    code, stdout, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                             PRED, '--weights', tmp_path / 'never_loaded.pth', '--out', out,
                             '--quiet')
    assert code == 0, err
    metrics = _metrics(out)
    assert metrics['miou'] == 1.0 and metrics['iiou'] == 1.0
    assert metrics['miou_category'] == 1.0 and metrics['iiou_category'] == 1.0
    assert metrics['model'] is None and metrics['topics']['scored'] == PRED
    assert metrics['class_iou']['wall'] is None  # absent and never predicted: undefined
    assert 'mIoU 1.0000' in stdout


def test_recorded_void_predictions_miss_every_pixel(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 2, pred=lambda gt, index: np.full(gt.shape, 255))
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--out', tmp_path / 'out', '--quiet')
    assert code == 0, err
    metrics = _metrics(tmp_path / 'out')
    assert metrics['miou'] == 0.0 and metrics['pixel_accuracy'] == 0.0
    assert sum(metrics['confusion_void']) > 0 and not any(map(any, metrics['confusion']))


def _noisy(gt, index):
    rng = np.random.default_rng(index)
    pred = ID_TO_TRAINID[gt].copy()
    noise = rng.random(pred.shape) < 0.3
    pred[noise] = rng.integers(0, 19, int(noise.sum()))
    return pred


def test_model_run_records_the_model_and_its_timing(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 3)
    code, stdout, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', *TINY, '--batch-size',
                             2, '--out', tmp_path / 'out', '--quiet')
    assert code == 0, err
    metrics = _metrics(tmp_path / 'out')
    assert metrics['frames'] == 3 and metrics['topics']['scored'] == TOPIC_LEFT_IMAGE
    assert metrics['model'] == {'name': 'espnetv2', 'weights': None, 'device': 'cpu',
                                'precision': 'fp32', 'tta': 'none', 'input_size': [64, 128]}
    assert metrics['timing']['inference_ms']['mean'] > 0
    assert metrics['timing']['frames_per_s'] > 0 and 'frames/s' in stdout


def test_shards_merge_into_the_single_run(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 5, pred=_noisy)
    runs = {'all': [], 's0': ['--shard', '0/2'], 's1': ['--shard', '1/2']}
    for name, extra in runs.items():
        code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                            PRED, '--out', tmp_path / name, '--quiet', *extra)
        assert code == 0, err
    assert [len(_rows(tmp_path / n)) for n in ('s0', 's1')] == [3, 2]
    code, _, err = _run(capsys, evaluate, 'merge', '--out', tmp_path / 'merged', tmp_path / 's0',
                        tmp_path / 's1')
    assert code == 0, err
    single, merged = _metrics(tmp_path / 'all'), _metrics(tmp_path / 'merged')
    for key in ('frames', 'confusion', 'confusion_void', 'class_iou', 'category_iou', 'miou',
                'miou_category'):
        assert merged[key] == single[key], key
    for key in ('iiou', 'iiou_category'):
        assert _close(merged[key], single[key]), key
    assert sorted(_rows(tmp_path / 'merged')) == sorted(_rows(tmp_path / 'all'))
    assert not merged['partial'] and merged['timing']['workers'] == 2
    assert merged['merged_from'] == [str(tmp_path / 's0'), str(tmp_path / 's1')]


def test_merge_of_an_incomplete_shard_set_is_partial(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 3)
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--shard', '1/2', '--out', tmp_path / 's1', '--quiet')
    assert code == 0, err
    code, _, err = _run(capsys, evaluate, '--merge', '--out', tmp_path / 'm', tmp_path / 's1')
    assert code == 0 and 'shard(s) 0/2 of bag missing' in err
    assert _metrics(tmp_path / 'm')['partial'] is True


@pytest.mark.parametrize('argv, message', [
    (['merge', '--out', 'OUT'], 'needs the output folders'),
    (['merge', '--out', 'OUT', 'NOWHERE'], 'not found'),
    (['--out', 'OUT'], '--bag is required'),
    (['--bag', 'NOWHERE', '--out', 'OUT'], 'does not exist'),
])
def test_bad_invocations_exit_2_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace('OUT', str(tmp_path / 'out')).replace('NOWHERE', str(tmp_path / 'x'))
            for a in argv]
    code, _, err = _run(capsys, evaluate, *argv)
    assert code == 2 and message in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1


# -- damaged bags and wrong topics ----------------------------------------------------------

def test_truncated_bag_exits_2_and_keeps_the_frames_before_the_damage(tmp_path, capsys):
    # ~1 MB per frame, so the mcap holds several chunks and half of it is still readable.
    _write_bag(tmp_path / 'bag', 8, height=256, width=512)
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--out', tmp_path / 'whole', '--quiet')
    assert code == 0, err
    mcap = next((tmp_path / 'bag').glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:mcap.stat().st_size // 2])
    out = tmp_path / 'out'
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--out', out, '--quiet')
    assert code == 2 and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1
    assert 'damaged' in err and 'partial: true' in err and str(out) in err
    metrics = _metrics(out)
    assert metrics['partial'] is True and 'damaged' in metrics['error']
    assert 0 < metrics['frames'] < 8
    assert _rows(out) == _rows(tmp_path / 'whole')[:metrics['frames']]
    assert all((out / name).is_file() for name in OUTPUT_FILES)


def test_bag_without_gt_exits_2_listing_its_topics(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 2, skip_gt=range(2))
    out = tmp_path / 'out'
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', *TINY, '--out', out,
                        '--quiet')
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f'no topic {TOPIC_GT_LABEL_IDS}' in err and '--gt-topic' in err
    assert f'topics present: {TOPIC_LEFT_IMAGE}, {PRED}' in err
    metrics = _metrics(out)
    assert metrics['partial'] is True and metrics['frames'] == 0 and metrics['miou'] is None


def test_wrong_left_topic_exits_2_before_loading_a_model(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 1)
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--left-topic',
                        '/camera/image_raw', '--weights', tmp_path / 'missing.pth', '--out',
                        tmp_path / 'out', '--quiet')
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert 'no topic /camera/image_raw (camera images)' in err and '--left-topic' in err
    assert 'missing.pth' not in err  # the topics are checked first


def test_wrong_explicit_instance_topic_exits_2(tmp_path, capsys):
    _write_bag(tmp_path / 'bag', 1)
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--instance-topic', '/inst', '--out', tmp_path / 'out', '--quiet')
    assert code == 2 and 'no topic /inst' in err


def test_frames_without_gt_or_of_another_size_are_skipped_and_listed(tmp_path, capsys):
    def pred(gt, index):
        return ID_TO_TRAINID[gt][:32] if index == 2 else ID_TO_TRAINID[gt]

    stamps = _write_bag(tmp_path / 'bag', 4, skip_gt=(1,), pred=pred)
    out = tmp_path / 'out'
    code, stdout, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                             PRED, '--out', out, '--quiet')
    assert code == 0, err
    metrics = _metrics(out)
    assert metrics['frames'] == 2 and not metrics['partial']
    assert [s['stamp_ns'] for s in metrics['skipped']] == stamps[1:3]
    assert 'no ground truth labelIds' in metrics['skipped'][0]['reason']
    assert 'sizes differ' in metrics['skipped'][1]['reason']
    assert '2 skipped' in stdout
    report = (out / 'report.md').read_text()
    assert str(stamps[1]) in report and str(stamps[2]) in report


def test_limit_scores_the_first_frames(tmp_path, capsys):
    stamps = _write_bag(tmp_path / 'bag', 4)
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                        PRED, '--limit', '2', '--out', tmp_path / 'out', '--quiet')
    assert code == 0, err
    assert [r[0] for r in _rows(tmp_path / 'out')] == stamps[:2]
    assert _metrics(tmp_path / 'out')['limit'] == 2


# -- compressed bags and label spaces --------------------------------------------------------

@pytest.mark.slow
def test_jpeg_bag_of_the_real_frames_evaluates_and_reports_the_cost_of_jpeg(
        tmp_path, capsys, cityscapes_root, espnetv2_weights):
    """make_bag --image-format jpeg (quality 90) vs raw, official ESPNetv2 weights."""
    metrics = {}
    for name, extra in (('raw', []), ('jpeg90', ['--image-format', 'jpeg', '--jpeg-quality',
                                                 '90'])):
        bag = tmp_path / name
        code, _, err = _run(capsys, make_bag, '--cityscapes-root', cityscapes_root, '--split',
                            'train', '--out', bag, '--no-progress', *extra)
        assert code == 0, err
        out = tmp_path / f'{name}_eval'
        code, _, err = _run(capsys, evaluate, '--bag', bag, '--model', 'espnetv2', '--weights',
                            espnetv2_weights, '--device', 'cpu', '--out', out, '--quiet')
        assert code == 0, err
        metrics[name] = _metrics(out)
    jpeg, raw = metrics['jpeg90'], metrics['raw']
    assert jpeg['topics']['scored'] == TOPIC_LEFT_IMAGE + '/compressed'  # the fallback
    assert jpeg['frames'] == raw['frames'] == REAL_FRAMES and not jpeg['partial']
    cost = raw['miou'] - jpeg['miou']
    with capsys.disabled():
        print(f'\nESPNetv2 on {REAL_FRAMES} real frames: mIoU raw {100 * raw["miou"]:.2f}, JPEG '
              f'quality 90 {100 * jpeg["miou"]:.2f} (cost {100 * cost:+.2f} points); category '
              f'mIoU {100 * raw["miou_category"]:.2f} -> {100 * jpeg["miou_category"]:.2f}')
    assert abs(cost) < 0.02  # JPEG 90 is close to lossless for the model


def test_label_map_cli_scores_the_example_maps_classes(tmp_path, capsys):
    from cityseg_ros.label_spaces import get_label_space

    label_map = Path(__file__).resolve().parents[2] / 'config' / 'label_map_example.yaml'
    space = get_label_space(label_map=str(label_map))
    _write_bag(tmp_path / 'bag', 3, pred=lambda gt, index: space.map(ID_TO_TRAINID[gt]))
    out = tmp_path / 'out'
    code, stdout, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic',
                             PRED, '--label-map', label_map, '--out', out, '--quiet')
    assert code == 0, err
    metrics = _metrics(out)
    assert metrics['label_space']['name'] == 'drivability'
    names = set(metrics['label_space']['names'])
    assert names <= {n for i, n in space.names.items() if i != space.ignore_id}
    assert all(v in (1.0, None) for v in metrics['class_iou'].values())
    assert metrics['miou'] == 1.0 and 'mIoU 1.0000' in stdout


def test_category_space_cli(tmp_path, capsys):
    from cityseg_ros.label_spaces import get_label_space

    space = get_label_space('category')
    _write_bag(tmp_path / 'bag', 2, pred=lambda gt, index: space.map(ID_TO_TRAINID[gt]))
    code, _, err = _run(capsys, evaluate, '--bag', tmp_path / 'bag', '--predictions-topic', PRED,
                        '--label-space', 'category', '--out', tmp_path / 'out', '--quiet')
    assert code == 0, err
    metrics = _metrics(tmp_path / 'out')
    assert list(metrics['class_iou']) == list(CATEGORY_NAMES)
    assert metrics['miou'] == metrics['miou_category'] == 1.0
