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

"""Every score of cityseg_ros.metrics equals the official cityscapesscripts evaluation.

The oracle is the pip package itself, driven through ``evaluateImgLists`` on PNG files written to
``tmp_path`` (its only input), with labelId predictions made from our trainId predictions.
"""

import json
import math
from pathlib import Path

from cityseg_ros.errors import CitysegError, ImageError
from cityseg_ros.labels import (CATEGORY_NAMES, CLASS_NAMES, ID_TO_TRAINID, INSTANCE_CLASSES,
                                NUM_CLASSES, TRAINID_TO_ID)
from cityseg_ros.metrics import (AVG_CLASS_SIZE, confusion, Counts, frame_stats,
                                 INSTANCE_CATEGORIES, Scores)
import numpy as np
import pytest

TOL = 1e-9
EVAL_MODULE = 'cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling'


@pytest.fixture(scope='module')
def official():
    """Import the official evaluation module, usable under numpy 2.4 and free of env effects."""
    with pytest.MonkeyPatch.context() as patch:
        # cityscapesscripts 2.3.0 calls np.in1d, removed in numpy 2.4; np.isin is its successor.
        patch.setattr(np, 'in1d', np.isin, raising=False)
        # The module reads this at import and raises if it is not a directory.
        patch.delenv('CITYSCAPES_EXPORT_DIR', raising=False)
        yield pytest.importorskip(EVAL_MODULE, reason='cityscapesscripts is not installed')


def _official_args(ev):
    """Return a private copy of the module's global ``args``, quiet, without file output."""
    args = ev.CArgs()
    vars(args).update(vars(ev.args))
    args.quiet = True
    args.JSONOutput = False
    args.evalInstLevelScore = True
    args.evalPixelAccuracy = False
    args.colorized = False
    args.bold = args.nocol = ''
    args.avgClassSize = dict(ev.args.avgClassSize)
    return args


def _write_png(path: Path, array: np.ndarray) -> str:
    from PIL import Image  # a dependency of cityscapesscripts, present whenever it is
    Image.fromarray(array).save(path)
    return str(path)


def run_official(ev, frames, tmp_path: Path) -> dict:
    """Score ``frames`` [(gt labelIds, pred trainIds, instanceIds)] with evaluateImgLists."""
    preds, gts = [], []
    for index, (gt, pred, inst) in enumerate(frames):
        # evaluatePair finds the instance file by replacing 'labelIds' with 'instanceIds'.
        gts.append(_write_png(tmp_path / f'f{index}_gtFine_labelIds.png', gt))
        _write_png(tmp_path / f'f{index}_gtFine_instanceIds.png', inst.astype(np.uint16))
        preds.append(_write_png(tmp_path / f'f{index}_pred.png', TRAINID_TO_ID[pred]))
    return ev.evaluateImgLists(preds, gts, _official_args(ev))


def _diff(ours: float, theirs: float) -> float:
    """Absolute difference; 0 when both are NaN, inf when only one is."""
    if math.isnan(ours) or math.isnan(theirs):
        return 0.0 if math.isnan(ours) and math.isnan(theirs) else math.inf
    return abs(ours - theirs)


def compare_with_official(scores: Scores, result: dict) -> float:
    """Assert every score and the confusion match the official result; return the max diff."""
    pairs = []
    for name in CLASS_NAMES:
        pairs.append((f'IoU {name}', scores.class_iou[name], result['classScores'][name]))
    for name in INSTANCE_CLASSES:
        pairs.append((f'iIoU {name}', scores.class_iiou[name], result['classInstScores'][name]))
    for name in CATEGORY_NAMES:
        pairs.append((f'cat IoU {name}', scores.category_iou[name],
                      result['categoryScores'][name]))
    for name in INSTANCE_CATEGORIES:
        pairs.append((f'cat iIoU {name}', scores.category_iiou[name],
                      result['categoryInstScores'][name]))
    pairs += [
        ('mIoU', scores.miou, result['averageScoreClasses']),
        ('iIoU', scores.iiou, result['averageScoreInstClasses']),
        ('mIoU category', scores.miou_category, result['averageScoreCategories']),
        ('iIoU category', scores.iiou_category, result['averageScoreInstCategories']),
    ]
    # Everything the official code scores beyond ours is undefined there.
    assert all(math.isnan(v) for k, v in result['classScores'].items() if k not in CLASS_NAMES)
    assert all(math.isnan(v) for k, v in result['classInstScores'].items()
               if k not in INSTANCE_CLASSES)
    assert math.isnan(result['categoryScores']['void'])
    assert all(math.isnan(v) for k, v in result['categoryInstScores'].items()
               if k not in INSTANCE_CATEGORIES)
    diffs = {name: _diff(ours, theirs) for name, ours, theirs in pairs}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, [p for p in pairs if p[0] == worst]

    # Confusion: official 34x34 over labelIds -> our 19 GT rows, 19 classes + "other" column.
    official = np.array(result['confMatrix'], dtype=np.int64)
    rows = official[TRAINID_TO_ID[:NUM_CLASSES]]
    expected = np.concatenate([rows[:, TRAINID_TO_ID[:NUM_CLASSES]],
                               rows.sum(axis=1, keepdims=True)
                               - rows[:, TRAINID_TO_ID[:NUM_CLASSES]].sum(axis=1, keepdims=True)],
                              axis=1)
    np.testing.assert_array_equal(scores.confusion, expected)
    return diffs[worst]


def make_frame(rng: np.random.Generator, height: int, width: int,
               absent_train_ids=(), never_predicted=(), smooth: bool = False):
    """Make a random frame: blocky GT with noise, void, instances; a noisy prediction.

    ``smooth`` frames have no pixel noise and blockwise prediction errors, as network outputs
    do: they take the run-length path of the counting, the noisy ones the per-pixel path.

    Returns (gt labelIds uint8, pred trainIds uint8, instanceIds int32).
    """
    absent_ids = {int(TRAINID_TO_ID[t]) for t in absent_train_ids}
    label_ids = np.array([i for i in range(34) if i not in absent_ids], dtype=np.uint8)
    cell = int(rng.integers(24, 40) if smooth else rng.integers(3, 12))
    grid_shape = (height // cell + 1, width // cell + 1)

    def blocks(grid):
        return np.kron(grid, np.ones((cell, cell), grid.dtype))[:height, :width]

    gt = blocks(rng.choice(label_ids, grid_shape))
    noise = rng.random(gt.shape) < (0.0 if smooth else 0.05)
    gt[noise] = rng.choice(label_ids, int(noise.sum()))

    # Instances: labelId * 1000 + k for classes with instances (24..33, caravan and trailer
    # included, which the official code skips), groups without an instance id keep labelId;
    # a few ego-vehicle pixels get the borderline id 1000.
    k = blocks(rng.integers(-1, 4, grid_shape))
    inst = gt.astype(np.int32)
    has_inst = (gt >= 24) & (gt <= 33) & (k >= 0)
    inst[has_inst] = gt[has_inst].astype(np.int32) * 1000 + k[has_inst]
    ego = (gt == 1) & (k == 0)
    inst[ego] = 1000

    choices = [t for t in range(NUM_CLASSES) if t not in never_predicted] + [255, 200, 19]
    choices = np.array(choices, np.uint8)
    pred = ID_TO_TRAINID[gt].copy()
    if smooth:
        wrong = blocks(rng.random(grid_shape) < 0.3)
        pred[wrong] = blocks(rng.choice(choices, grid_shape))[wrong]
    else:
        wrong = rng.random(gt.shape) < 0.3
        pred[wrong] = rng.choice(choices, int(wrong.sum()))
    for t in never_predicted:
        pred[pred == t] = 255
    # Every other absent class is predicted somewhere: a false positive only, IoU 0.
    predicted_absent = [t for t in absent_train_ids if t not in never_predicted]
    pred[0, :len(predicted_absent)] = predicted_absent
    return gt, pred, inst


def score(frames) -> Scores:
    counts = Counts()
    for gt, pred, inst in frames:
        counts.add(gt, pred, inst)
    return Scores.from_counts(counts)


@pytest.mark.parametrize('seed, height, width, n_frames, smooth', [
    (0, 37, 53, 3, False), (1, 64, 128, 2, False), (2, 120, 96, 4, False),
    (3, 1, 257, 2, False), (4, 200, 160, 1, False),
    (5, 256, 384, 3, True), (6, 181, 333, 2, True),
])
def test_scores_equal_official_on_random_frames(official, tmp_path, seed, height, width,
                                                n_frames, smooth):
    rng = np.random.default_rng(seed)
    # Classes absent from the GT: some predicted (IoU 0), one never predicted (undefined).
    absent = tuple(int(t) for t in rng.choice(NUM_CLASSES, 4, replace=False))
    frames = [make_frame(rng, height, width, absent, never_predicted=absent[:1], smooth=smooth)
              for _ in range(n_frames)]
    scores = score(frames)
    compare_with_official(scores, run_official(official, frames, tmp_path))
    assert math.isnan(scores.class_iou[CLASS_NAMES[absent[0]]])
    for t in absent[1:]:
        assert scores.class_iou[CLASS_NAMES[t]] == 0.0


def test_scores_equal_official_without_instances_in_gt(official, tmp_path):
    rng = np.random.default_rng(7)
    gt, pred, _ = make_frame(rng, 48, 64)
    frames = [(gt, pred, gt.astype(np.int32))]  # instanceIds without any id > 1000
    compare_with_official(score(frames), run_official(official, frames, tmp_path))


def test_scores_equal_official_on_real_ground_truth(official, shared, tmp_path):
    from PIL import Image
    files = sorted(shared('data', 'cityscapes', 'gtFine', 'train').glob('*/*_labelIds.png'))
    assert files, 'no *_gtFine_labelIds.png under ../shared/data/cityscapes/gtFine/train'
    rng = np.random.default_rng(0)
    counts = Counts()
    preds = []
    for path in files:
        gt = np.array(Image.open(path))
        inst = np.array(Image.open(str(path).replace('labelIds', 'instanceIds')))
        # A plausible network output: shifted boundaries, wrong blobs, void and car -> truck.
        pred = np.roll(ID_TO_TRAINID[gt], (int(rng.integers(-6, 7)), int(rng.integers(-9, 10))),
                       axis=(0, 1))
        for _ in range(12):
            y, x = rng.integers(0, gt.shape[0] - 100), rng.integers(0, gt.shape[1] - 200)
            pred[y:y + rng.integers(5, 100), x:x + rng.integers(5, 200)] = rng.choice(
                [*range(NUM_CLASSES), 255])
        pred[(pred == CLASS_NAMES.index('car')) & (rng.random(gt.shape) < 0.2)] = \
            CLASS_NAMES.index('truck')
        counts.add(gt, pred, inst)
        preds.append(_write_png(tmp_path / f'{path.stem}_pred.png', TRAINID_TO_ID[pred]))
    result = official.evaluateImgLists(preds, [str(f) for f in files], _official_args(official))
    scores = Scores.from_counts(counts)
    compare_with_official(scores, result)
    assert 0.3 < scores.miou < 1.0 and 0.1 < scores.iiou < 1.0


def test_avg_class_size_is_the_official_table(official):
    assert AVG_CLASS_SIZE == official.args.avgClassSize


def test_confusion_counts_void_predictions_as_false_negatives_only():
    gt = np.array([[0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 255, 200, 0]], np.uint8)
    conf = confusion(gt, pred, n=2)
    np.testing.assert_array_equal(conf, [[1, 0, 1], [0, 0, 1]])
    assert conf.dtype == np.int64


def test_confusion_in_train_space_equals_counts_from_label_ids():
    rng = np.random.default_rng(1)
    gt, pred, _ = make_frame(rng, 90, 70)
    counts = Counts().add(gt, pred)
    np.testing.assert_array_equal(confusion(ID_TO_TRAINID[gt], pred), counts.confusion)


@pytest.mark.parametrize('smooth', [True, False])
def test_confusion_matches_a_per_pixel_count(smooth):
    """Both counting paths (run-length for smooth maps, plain for noisy ones) are exact."""
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 22, (64, 96)).astype(np.uint8)
    pred = rng.integers(0, 21, (64, 96)).astype(np.uint8)
    if smooth:
        gt = np.repeat(np.repeat(gt[:4, :6], 16, 0), 16, 1)
        pred = np.repeat(np.repeat(pred[:8, :6], 8, 0), 16, 1)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        if g < NUM_CLASSES:
            expected[g, min(p, NUM_CLASSES)] += 1
    np.testing.assert_array_equal(confusion(gt, pred), expected)


@pytest.mark.parametrize('size', [0, 1, 4095, 4096, 10001, 65536])
def test_sparse_flatnonzero_equals_numpy(size):
    from cityseg_ros.metrics import _flatnonzero
    rng = np.random.default_rng(size)
    for density in (0.0, 0.01, 0.5, 1.0):
        mask = rng.random(size) < density
        np.testing.assert_array_equal(_flatnonzero(mask), np.flatnonzero(mask))


def test_empty_frame_counts_nothing():
    counts = Counts().add(np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8),
                          np.zeros((0, 5), np.uint16))
    assert counts.confusion.sum() == 0 and counts.frames == 1


def test_class_absent_from_gt_but_predicted_scores_zero():
    road, sky = CLASS_NAMES.index('road'), CLASS_NAMES.index('sky')
    gt = np.full((4, 4), TRAINID_TO_ID[road], np.uint8)
    pred = np.full((4, 4), road, np.uint8)
    pred[0] = sky
    scores = Scores.from_counts(Counts().add(gt, pred))
    assert scores.class_iou['road'] == 12 / 16
    assert scores.class_iou['sky'] == 0.0
    assert math.isnan(scores.class_iou['car'])
    assert scores.miou == (12 / 16 + 0.0) / 2


def test_merge_of_two_halves_equals_the_whole():
    rng = np.random.default_rng(3)
    frames = [make_frame(rng, 50, 70) for _ in range(6)]
    whole = Counts()
    first, second = Counts(), Counts()
    for index, frame in enumerate(frames):
        whole.add(*frame)
        (first if index < 3 else second).add(*frame)
    for merged in (first + second, first.copy().merge(second)):
        np.testing.assert_array_equal(merged.confusion, whole.confusion)
        for name in ('tp_weighted', 'fn_weighted', 'category_tp_weighted',
                     'category_fn_weighted'):
            np.testing.assert_allclose(getattr(merged, name), getattr(whole, name), rtol=1e-12)
        assert (merged.frames, merged.instance_frames) == (6, 6)
    assert first.frames == 3  # __add__ left its operands alone


def test_save_and_load_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(4)
    counts = Counts()
    for _ in range(2):
        counts.add(*make_frame(rng, 40, 60))
    counts.add(*make_frame(rng, 40, 60)[:2])
    path = tmp_path / 'shard.npz'
    counts.save(path)
    loaded = Counts.load(path)
    for name in Counts._ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(counts, name))
        assert getattr(loaded, name).dtype == getattr(counts, name).dtype
    assert (loaded.frames, loaded.instance_frames) == (3, 2)
    assert Scores.from_counts(loaded).to_dict() == Scores.from_counts(counts).to_dict()


def test_load_names_the_problem(tmp_path):
    with pytest.raises(CitysegError, match='not found'):
        Counts.load(tmp_path / 'missing.npz')
    bad = tmp_path / 'bad.npz'
    bad.write_bytes(b'not a zip file')
    with pytest.raises(CitysegError, match='cannot read counts file'):
        Counts.load(bad)
    other = tmp_path / 'other.npz'
    np.savez(other, confusion=np.zeros((19, 20), np.int64))
    with pytest.raises(CitysegError, match='not a counts file'):
        Counts.load(other)


def test_add_rejects_mismatched_or_non_integer_images():
    gt = np.zeros((4, 6), np.uint8)
    with pytest.raises(ImageError, match='differ in size'):
        Counts().add(gt, np.zeros((4, 5), np.uint8))
    with pytest.raises(ImageError, match='differ in size'):
        Counts().add(gt, gt, np.zeros((5, 6), np.uint16))
    with pytest.raises(ImageError, match='integer'):
        Counts().add(gt, gt.astype(np.float32))
    with pytest.raises(ImageError, match='HxW'):
        Counts().add(gt, np.zeros((4, 6, 3), np.uint8))


def test_wide_integer_predictions_outside_uint8_are_misses():
    gt = np.full((2, 2), TRAINID_TO_ID[0], np.uint8)
    pred = np.array([[0, 256], [-1, 0]], np.int32)
    np.testing.assert_array_equal(Counts().add(gt, pred).confusion[0, [0, NUM_CLASSES]], [2, 2])


def test_instances_of_ignored_or_unknown_labels_are_skipped():
    rng = np.random.default_rng(5)
    gt, pred, inst = make_frame(rng, 60, 80)
    reference = Counts().add(gt, pred, inst)
    noisy = inst.copy()
    noisy[:5] = 29001  # caravan: ignored in evaluation
    noisy[5:8] = 50001  # labelId 50: not a Cityscapes label
    trimmed = gt.copy()
    trimmed[:8] = 0
    pred_trimmed = pred.copy()
    pred_trimmed[:8] = 255
    inst_trimmed = inst.copy()
    inst_trimmed[:8] = 0
    expected = Counts().add(trimmed, pred_trimmed, inst_trimmed)
    got = Counts().add(trimmed, pred_trimmed, noisy)
    np.testing.assert_array_equal(got.tp_weighted, expected.tp_weighted)
    np.testing.assert_array_equal(got.category_fn_weighted, expected.category_fn_weighted)
    assert reference.tp_weighted.sum() > 0


def test_iiou_is_undefined_without_instance_ids():
    rng = np.random.default_rng(6)
    gt, pred, _ = make_frame(rng, 30, 40)
    scores = Scores.from_counts(Counts().add(gt, pred))
    assert math.isnan(scores.iiou) and math.isnan(scores.iiou_category)
    assert all(math.isnan(v) for v in scores.class_iiou.values())
    assert not math.isnan(scores.miou)


def test_frame_stats_gives_accuracy_and_miou():
    road, car = CLASS_NAMES.index('road'), CLASS_NAMES.index('car')
    gt = np.array([[TRAINID_TO_ID[road]] * 3 + [TRAINID_TO_ID[car], 0]], np.uint8)
    pred = np.array([[road, road, car, car, car]], np.uint8)  # last GT pixel is void
    stats = frame_stats(gt, pred)
    assert stats.pixel_accuracy == 3 / 4
    assert stats.miou == (2 / 3 + 1 / 2) / 2
    accuracy, miou = stats
    assert miou == Scores.from_counts(Counts().add(gt, pred)).miou


def test_to_dict_is_the_metrics_json_contract_with_null_for_undefined():
    rng = np.random.default_rng(8)
    gt, pred, inst = make_frame(rng, 30, 40, absent_train_ids=(16,), never_predicted=(16,))
    scores = Scores.from_counts(Counts().add(gt, pred, inst))
    data = json.loads(json.dumps(scores.to_dict(), allow_nan=False))
    assert set(data) == {'miou', 'class_iou', 'category_iou', 'miou_category', 'iiou',
                         'iiou_category', 'confusion'}
    assert list(data['class_iou']) == list(CLASS_NAMES)
    assert list(data['category_iou']) == list(CATEGORY_NAMES)
    assert data['class_iou']['train'] is None
    assert data['miou'] == scores.miou
    assert np.array(data['confusion']).shape == (NUM_CLASSES, NUM_CLASSES)
    assert data['confusion'] == scores.confusion[:, :NUM_CLASSES].tolist()


def test_empty_counts_score_nan():
    scores = Scores.from_counts(Counts())
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)
    assert scores.frames == 0


def _random_counts(seed=0, frames=4):
    rng = np.random.default_rng(seed)
    counts = Counts()
    for index in range(frames):
        gt = rng.integers(0, 34, (32, 64)).astype(np.uint8)
        pred = ID_TO_TRAINID[gt].copy()
        noise = rng.random(pred.shape) < 0.3
        pred[noise] = rng.integers(0, 20, int(noise.sum()))
        pred[rng.random(pred.shape) < 0.05] = 255
        counts.add(gt, pred, np.where(gt >= 24, gt.astype(np.int32) * 1000 + index, gt))
    return counts


def test_category_groups_give_exactly_the_official_category_scores():
    from cityseg_ros.label_spaces import get_label_space
    from cityseg_ros.metrics import ClassGroups

    counts = _random_counts()
    space = get_label_space('category')
    groups = ClassGroups.from_lut('category', 'category', space.lut, space.ignore_id,
                                  space.names)
    iou, accuracy = groups.class_iou(counts)
    official = Scores.from_counts(counts)
    assert iou.tolist() == list(official.category_iou.values())
    assert groups.names == tuple(official.category_iou)
    assert 0 < accuracy <= 1
    trainid = ClassGroups.trainid()
    assert trainid.official and not groups.official
    assert trainid.class_iou(counts)[0].tolist() == list(official.class_iou.values())
    assert ClassGroups.from_dict(groups.to_dict()) == groups


@pytest.mark.parametrize('data', [
    [], {'name': 'x'}, {'name': 'x', 'kind': 'category', 'ids': [1], 'names': ['a'],
                        'groups': [0] * 18},
    {'name': 'x', 'kind': 'other', 'ids': [1], 'names': ['a'], 'groups': [0] * 19},
    {'name': 'x', 'kind': 'label_map', 'ids': [2, 1], 'names': ['a', 'b'],
     'groups': [0] * 19},
    {'name': 'x', 'kind': 'label_map', 'ids': [1], 'names': ['a'], 'groups': [1] * 19},
    {'name': 'x', 'kind': 'label_map', 'ids': [True], 'names': ['a'], 'groups': [0] * 19},
])
def test_class_groups_refuse_what_to_dict_never_writes(data):
    from cityseg_ros.metrics import ClassGroups

    with pytest.raises(ValueError):
        ClassGroups.from_dict(data)


def test_merge_refuses_counts_that_would_overflow():
    big = _random_counts()
    big.confusion[0, 0] = 2**53
    with pytest.raises(CitysegError, match='would exceed'):
        big.copy().merge(big)


def test_saved_counts_load_back_exactly_and_are_checked(tmp_path):
    counts = _random_counts()
    counts.save(tmp_path / 'c.npz')
    loaded = Counts.load(tmp_path / 'c.npz')
    for name in Counts._ARRAYS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(counts, name))
    counts.confusion[1, 1] = -1
    with pytest.raises(CitysegError, match='impossible counts'):
        counts.check()
