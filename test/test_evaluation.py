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

"""evaluation: bag replay scored like the arrays themselves; shards, skips, damage, outputs."""

import json
import math

from cityseg_ros.bags import (BagWriter, TOPIC_GT_INSTANCE_IDS, TOPIC_GT_LABEL_IDS,
                              TOPIC_LEFT_IMAGE)
from cityseg_ros.errors import BagError, ConfigError
from cityseg_ros.evaluation import (BagEvaluator, EvalOptions, load_evaluation,
                                    merge_evaluations, OUTPUT_FILES, write_outputs)
from cityseg_ros.labels import CLASS_NAMES, ID_TO_TRAINID
from cityseg_ros.metrics import Counts, Scores
import numpy as np
import pytest

PRED = '/stereo/left/semantic/labels'
START = 1_600_000_000_000_000_000
PERIOD = 58_823_529  # 17 Hz
# labelIds of a street: road, sidewalk, building, vegetation, sky, person, rider, car, bicycle,
# and two ignored ones (static, ground).
LABEL_IDS = np.array([7, 8, 11, 21, 23, 24, 25, 26, 33, 4, 6], np.uint8)


def make_frame(rng, height=32, width=64):
    """Return (left RGB, GT labelIds, GT instanceIds, perturbed predicted trainIds)."""
    gt = LABEL_IDS[rng.integers(0, len(LABEL_IDS), (height // 8, width // 8))]
    gt = np.kron(gt, np.ones((8, 8), np.uint8))
    instances = gt.astype(np.uint16)
    things = gt >= 24
    blocks = np.kron(np.arange((height // 8) * (width // 8)).reshape(height // 8, width // 8),
                     np.ones((8, 8), int))
    instances[things] = gt[things].astype(np.uint16) * 1000 + blocks[things]
    pred = ID_TO_TRAINID[gt].copy()
    noise = rng.random(pred.shape) < 0.2
    pred[noise] = rng.integers(0, 19, int(noise.sum()))
    left = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return left, gt, instances, pred


def write_bag(path, frames, storage='mcap', gt=True, predictions=True):
    """Write frames (dicts: left, gt, inst, pred; a None part is left out) at 17 Hz."""
    stamps = []
    with BagWriter(path, storage=storage) as bag:
        for index, frame in enumerate(frames):
            stamp = START + index * PERIOD
            stamps.append(stamp)
            bag.write_image(TOPIC_LEFT_IMAGE, frame['left'], 'rgb8', stamp, 'left')
            if gt and frame.get('gt') is not None:
                bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamp, 'left')
            if gt and frame.get('inst') is not None:
                bag.write_image(TOPIC_GT_INSTANCE_IDS, frame['inst'], 'mono16', stamp, 'left')
            if predictions and frame.get('pred') is not None:
                bag.write_image(PRED, frame['pred'], 'mono8', stamp, 'left')
    return stamps


def frames(count, seed=0, **size):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        left, gt, inst, pred = make_frame(rng, **size)
        out.append({'left': left, 'gt': gt, 'inst': inst, 'pred': pred})
    return out


def evaluate(bag, **options):
    options.setdefault('predictions_topic', PRED)
    return BagEvaluator(bag, EvalOptions(**options)).run()


def direct_counts(frame_list):
    counts = Counts()
    for frame in frame_list:
        counts.add(frame['gt'], frame['pred'], frame['inst'])
    return counts


def scored(rows):
    """Return the scores of frame rows, without their timing."""
    return [(row.stamp_ns, row.pixel_accuracy, row.miou) for row in rows]


def assert_same_counts(a, b, exact=True):
    """Equal counts; merged shards add the iIoU float sums in another order (``exact=False``)."""
    np.testing.assert_array_equal(a.confusion, b.confusion)
    for name in ('tp_weighted', 'fn_weighted', 'category_tp_weighted', 'category_fn_weighted'):
        if exact:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        else:
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12,
                                       err_msg=name)
    assert (a.frames, a.instance_frames) == (b.frames, b.instance_frames)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_recorded_predictions_score_like_the_arrays(tmp_path, storage):
    data = frames(5)
    stamps = write_bag(tmp_path / 'bag', data, storage)
    result = evaluate(tmp_path / 'bag')
    assert_same_counts(result.counts, direct_counts(data))
    assert [row.stamp_ns for row in result.frames] == stamps
    assert not result.partial and not result.skipped and result.model is None
    first = Scores.from_counts(Counts().add(data[0]['gt'], data[0]['pred'], data[0]['inst']))
    assert result.frames[0].miou == first.miou
    assert result.frames[0].pixel_accuracy == first.pixel_accuracy


def test_perfect_predictions_score_one_on_present_classes(tmp_path):
    data = frames(3)
    for frame in data:
        frame['pred'] = ID_TO_TRAINID[frame['gt']]
    write_bag(tmp_path / 'bag', data)
    scores = evaluate(tmp_path / 'bag').scores
    present = {CLASS_NAMES[i] for i in np.unique(ID_TO_TRAINID[LABEL_IDS]) if i < 19}
    assert scores.miou == 1.0 and scores.iiou == 1.0 and scores.miou_category == 1.0
    assert {k for k, v in scores.class_iou.items() if not math.isnan(v)} == present
    assert all(scores.class_iou[name] == 1.0 for name in present)


def test_model_scores_its_own_predictions_whatever_the_batch(tmp_path):
    from cityseg_ros.engine import Segmenter

    data = frames(3, height=64, width=128)
    write_bag(tmp_path / 'bag', data, predictions=False)
    seg = Segmenter('espnetv2', weights=None, device='cpu', input_size=(64, 128))
    expected = Counts()
    for frame in data:
        expected.add(frame['gt'], seg([frame['left']])[0], frame['inst'])
    single = BagEvaluator(tmp_path / 'bag').run(seg)
    batched = BagEvaluator(tmp_path / 'bag', EvalOptions(batch_size=2)).run(seg)
    assert_same_counts(single.counts, expected)
    assert_same_counts(batched.counts, expected)
    assert single.model.name == 'espnetv2' and single.model.weights is None
    assert all(row.inference_ms > 0 for row in single.frames)
    assert single.timing.inference_s > 0 and single.frames_per_s > 0


def test_frames_without_gt_or_of_another_size_are_listed_not_fatal(tmp_path):
    data = frames(5)
    data[1]['gt'] = data[1]['inst'] = None
    data[3]['pred'] = data[3]['pred'][:16]
    data[4]['pred'] = None
    stamps = write_bag(tmp_path / 'bag', data)
    result = evaluate(tmp_path / 'bag')
    assert [row.stamp_ns for row in result.frames] == [stamps[0], stamps[2]]
    reasons = dict(result.skipped)
    assert list(reasons) == [stamps[1], stamps[3], stamps[4]]
    assert 'no ground truth labelIds' in reasons[stamps[1]]
    assert 'sizes differ' in reasons[stamps[3]] and '64x16' in reasons[stamps[3]]
    assert reasons[stamps[4]] == 'ground truth without a prediction'
    assert_same_counts(result.counts, direct_counts([data[0], data[2]]))


def test_shards_partition_the_frames_and_merge_into_the_whole(tmp_path):
    data = frames(7)
    write_bag(tmp_path / 'bag', data)
    whole = evaluate(tmp_path / 'bag')
    parts = [evaluate(tmp_path / 'bag', shard=(i, 3)) for i in range(3)]
    assert [len(p.frames) for p in parts] == [3, 2, 2]
    assert [r.stamp_ns for r in parts[1].frames] == [whole.frames[1].stamp_ns,
                                                     whole.frames[4].stamp_ns]
    merged = merge_evaluations(parts)
    assert_same_counts(merged.counts, whole.counts, exact=False)
    assert scored(merged.frames) == scored(whole.frames)
    assert not merged.partial and merged.timing.workers == 3


def test_limit_counts_frames_before_sharding(tmp_path):
    data = frames(6)
    write_bag(tmp_path / 'bag', data)
    limited = evaluate(tmp_path / 'bag', limit=3)
    assert_same_counts(limited.counts, direct_counts(data[:3]))
    shards = [evaluate(tmp_path / 'bag', limit=3, shard=(i, 2)) for i in range(2)]
    assert [len(s.frames) for s in shards] == [2, 1]
    assert_same_counts(merge_evaluations(shards).counts, limited.counts, exact=False)


def test_outputs_round_trip_and_follow_the_contract(tmp_path):
    data = frames(4)
    data[2]['gt'] = data[2]['inst'] = None
    data[3]['pred'] = ID_TO_TRAINID[data[3]['gt']]
    for frame in data[:2]:  # never predicting wall leaves its IoU undefined
        frame['pred'] = np.where(frame['pred'] == 3, 0, frame['pred']).astype(np.uint8)
    write_bag(tmp_path / 'bag', data)
    result = evaluate(tmp_path / 'bag', shard=(0, 1))
    paths = write_outputs(result, tmp_path / 'out')
    assert [p.name for p in paths] == list(OUTPUT_FILES) and all(p.is_file() for p in paths)
    metrics = json.loads((tmp_path / 'out' / 'metrics.json').read_text(),
                         parse_constant=lambda c: pytest.fail(f'{c} in metrics.json'))
    for key in ('miou', 'class_iou', 'category_iou', 'miou_category', 'iiou', 'iiou_category',
                'confusion', 'frames', 'timing', 'skipped', 'partial'):
        assert key in metrics, key
    assert np.array(metrics['confusion']).shape == (19, 19)
    assert metrics['class_iou']['wall'] is None  # undefined -> null
    assert metrics['frames'] == 3 and len(metrics['skipped']) == 1
    assert metrics['miou'] == result.scores.miou
    assert metrics['timing']['frames_per_s'] > 0
    report = (tmp_path / 'out' / 'report.md').read_text()
    assert 'motorcycle' in report and 'iIoU' in report and 'Skipped frames (1)' in report
    assert (tmp_path / 'out' / 'confusion.png').read_bytes()[:4] == b'\x89PNG'
    loaded = load_evaluation(tmp_path / 'out')
    assert_same_counts(loaded.counts, result.counts)
    assert loaded.frames == result.frames and loaded.skipped == result.skipped
    assert loaded.shard == (0, 1) and loaded.topics == result.topics


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_damaged_bag_keeps_the_frames_before_the_damage(tmp_path, storage):
    data = frames(8, height=256, width=512)  # ~1 MB per frame: several mcap chunks
    write_bag(tmp_path / 'bag', data, storage)
    whole = evaluate(tmp_path / 'bag')
    cut = next((tmp_path / 'bag').glob('*.mcap' if storage == 'mcap' else '*.db3'))
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=PRED))
    with pytest.raises(BagError, match='damaged'):
        evaluator.run()
    partial = evaluator.evaluation
    assert partial.partial and 'damaged' in partial.error
    assert 0 < len(partial.frames) < len(data)
    assert scored(partial.frames) == scored(whole.frames[:len(partial.frames)])
    assert_same_counts(partial.counts, direct_counts(data[:len(partial.frames)]))


def test_missing_topic_names_the_topics_present(tmp_path):
    write_bag(tmp_path / 'bag', frames(2), gt=False)
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=PRED))
    with pytest.raises(BagError, match='no topic /stereo/left/gt/label_ids.*topics present: '
                                       '/stereo/left/image_rect_color'):
        evaluator.check()
    assert evaluator.evaluation.partial and not evaluator.evaluation.frames


def test_missing_instances_are_optional_when_not_required(tmp_path):
    data = frames(2)
    for frame in data:
        frame['inst'] = None
    write_bag(tmp_path / 'bag', data)
    with pytest.raises(BagError, match='instance_ids'):
        evaluate(tmp_path / 'bag')
    result = evaluate(tmp_path / 'bag', require_instances=False)
    assert result.counts.frames == 2 and result.counts.instance_frames == 0
    assert math.isnan(result.scores.iiou) and result.topics['instance'] is None


def test_a_colour_image_as_predictions_is_refused(tmp_path):
    write_bag(tmp_path / 'bag', frames(2))
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=TOPIC_LEFT_IMAGE))
    with pytest.raises(BagError, match='not mono8 trainIds'):
        evaluator.run()


@pytest.mark.parametrize('options, match', [
    ({'shard': (2, 2)}, 'shard 2/2'),
    ({'limit': 0}, 'limit'),
    ({'batch_size': 0}, 'batch size'),
    ({'gt_topic': TOPIC_LEFT_IMAGE}, 'must differ'),
])
def test_bad_options_raise_config_error(tmp_path, options, match):
    with pytest.raises(ConfigError, match=match):
        BagEvaluator(tmp_path / 'bag', EvalOptions(**options))


def test_run_needs_exactly_one_label_source_and_runs_once(tmp_path):
    with pytest.raises(ConfigError, match='segmenter'):
        BagEvaluator(tmp_path / 'bag').run()
    write_bag(tmp_path / 'bag', frames(1))
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=PRED))
    evaluator.run()
    with pytest.raises(ConfigError, match='run already'):
        evaluator.run()


def test_merge_refuses_a_shard_twice_and_flags_a_missing_one(tmp_path):
    write_bag(tmp_path / 'bag', frames(4))
    first = evaluate(tmp_path / 'bag', shard=(0, 2))
    with pytest.raises(ConfigError, match='given twice'):
        merge_evaluations([first, evaluate(tmp_path / 'bag', shard=(0, 2))])
    alone = merge_evaluations([first])
    assert alone.partial and '1/2 of bag missing' in alone.error
    with pytest.raises(ConfigError, match='nothing to merge'):
        merge_evaluations([])


# -- every frame is scored or listed ----------------------------------------------------------

BIG = {'height': 1024, 'width': 1024}  # 1 MiB mono8: every message closes its own mcap chunk


def _chunk_offsets(mcap):
    """Byte offsets of the chunk records of an mcap file, in file order."""
    data = mcap.read_bytes()
    offsets, pos = [], 8
    while pos + 9 <= len(data):
        opcode, length = data[pos], int.from_bytes(data[pos + 1:pos + 9], 'little')
        if opcode == 0x06:
            offsets.append(pos)
        if opcode == 0x0F:
            break
        pos += 9 + length
    return offsets


@pytest.mark.parametrize('cut_in, listed', [
    ('prediction', None),
    ('ground truth', 'ground truth labelIds lost to the damage in the bag; '
                     'ground truth instanceIds lost to the damage in the bag'),
    ('instances', 'ground truth instanceIds lost to the damage in the bag'),
])
def test_truncated_bag_scores_the_last_complete_frame_and_lists_the_cut_one(
        tmp_path, cut_in, listed):
    data = frames(4, **BIG)
    stamps = []
    with BagWriter(tmp_path / 'bag', storage='mcap') as bag:
        for index, frame in enumerate(data):  # file order: pred, gt, inst of each frame
            stamp = START + index * PERIOD
            stamps.append(stamp)
            bag.write_image(PRED, frame['pred'], 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_INSTANCE_IDS, frame['inst'], 'mono16', stamp, 'left')
    mcap = next((tmp_path / 'bag').glob('*.mcap'))
    chunks = _chunk_offsets(mcap)
    assert len(chunks) == 3 * len(data)
    part = {'prediction': 0, 'ground truth': 1, 'instances': 2}[cut_in]
    cut = chunks[3 * 2 + part] + 1000  # inside frame 2's part: frames 0 and 1 are complete
    mcap.write_bytes(mcap.read_bytes()[:cut])
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=PRED))
    with pytest.raises(BagError, match='damaged'):
        evaluator.run()
    result = evaluator.evaluation
    assert [row.stamp_ns for row in result.frames] == stamps[:2]
    assert_same_counts(result.counts, direct_counts(data[:2]))
    expected = [] if listed is None else [(stamps[2], listed)]
    assert [tuple(s) for s in result.skipped] == expected
    assert result.partial


def test_duplicate_stamps_are_listed_not_dropped(tmp_path):
    data = frames(3)
    stamps = [START + i * PERIOD for i in range(3)]
    with BagWriter(tmp_path / 'bag') as bag:
        for index, frame in enumerate(data):
            bag.write_image(PRED, frame['pred'], 'mono8', stamps[index], 'left')
            if index == 1:  # a second prediction with the same stamp
                bag.write_image(PRED, frame['pred'], 'mono8', stamps[index], 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamps[index], 'left')
            if index == 2:  # a second ground truth with the same stamp
                bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamps[index], 'left')
    result = evaluate(tmp_path / 'bag', instance_topic=None)
    assert [row.stamp_ns for row in result.frames] == stamps
    reasons = dict(result.skipped)
    assert list(reasons) == stamps[1:]
    assert reasons[stamps[1]].startswith('duplicate stamp: 2 predicted trainIds have it')
    assert reasons[stamps[2]].startswith('duplicate stamp: 2 ground truth labelIds have it')


def test_ground_truth_beside_a_matched_one_is_listed(tmp_path):
    data = frames(2)
    stamps = [START + i * PERIOD for i in range(2)]
    with BagWriter(tmp_path / 'bag') as bag:
        for index, frame in enumerate(data):
            bag.write_image(PRED, frame['pred'], 'mono8', stamps[index], 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamps[index], 'left')
        bag.write_image(TOPIC_GT_LABEL_IDS, data[1]['gt'], 'mono8', stamps[1] + 10**6, 'left')
    result = evaluate(tmp_path / 'bag', instance_topic=None)
    assert [row.stamp_ns for row in result.frames] == stamps
    reason = 'ground truth not used: another one within 10 ms was matched to its frame'
    assert result.skipped == [(stamps[1] + 10**6, reason)]


# -- label spaces and compressed topics ------------------------------------------------------

def _write_space_bag(path, data, to_space, compressed=False):
    """Predictions (mapped by ``to_space``) + GT; the predictions as PNG if ``compressed``."""
    topic = PRED + '/compressed' if compressed else PRED
    with BagWriter(path) as bag:
        for index, frame in enumerate(data):
            stamp = START + index * PERIOD
            labels = to_space(frame['pred'])
            if compressed:
                bag.write_compressed_image(topic, labels, 'png', 'mono8', stamp, 'left')
            else:
                bag.write_image(topic, labels, 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', stamp, 'left')
            bag.write_image(TOPIC_GT_INSTANCE_IDS, frame['inst'], 'mono16', stamp, 'left')
    return topic


def _with_void(data, seed=1):
    """Frames whose predictions also hold 255 (no prediction) here and there."""
    rng = np.random.default_rng(seed)
    for frame in data:
        frame['pred'] = np.where(rng.random(frame['pred'].shape) < 0.05, 255,
                                 frame['pred']).astype(np.uint8)
    return data


def test_labelid_predictions_give_exactly_the_official_scores(tmp_path):
    from cityseg_ros.label_spaces import get_label_space

    data = _with_void(frames(4))
    space = get_label_space('labelid')
    write_bag(tmp_path / 'train', data)
    topic = _write_space_bag(tmp_path / 'label', data, space.map)
    official = evaluate(tmp_path / 'train').to_dict()
    ours = evaluate(tmp_path / 'label', predictions_topic=topic, label_space='labelid').to_dict()
    for key in ('miou', 'class_iou', 'category_iou', 'miou_category', 'iiou', 'iiou_category',
                'class_iiou', 'category_iiou', 'confusion', 'confusion_void', 'pixel_accuracy'):
        assert ours[key] == official[key], key
    assert ours['label_space']['kind'] == 'labelid'


def test_category_predictions_give_the_official_category_scores(tmp_path):
    from cityseg_ros.label_spaces import get_label_space

    data = _with_void(frames(4))
    write_bag(tmp_path / 'train', data)
    topic = _write_space_bag(tmp_path / 'cat', data, get_label_space('category').map)
    official = evaluate(tmp_path / 'train').to_dict()
    result = evaluate(tmp_path / 'cat', predictions_topic=topic, label_space='category')
    ours = result.to_dict()
    assert ours['class_iou'] == official['category_iou']  # the space's classes: categories
    assert ours['category_iou'] == official['category_iou']
    assert ours['miou'] == ours['miou_category'] == official['miou_category']
    assert ours['iiou'] == ours['iiou_category'] == official['iiou_category']
    assert np.array(ours['confusion']).shape == (7, 7)
    report_dir = tmp_path / 'out'
    write_outputs(result, report_dir)
    assert '| construction |' in (report_dir / 'report.md').read_text()


def test_label_map_scores_the_maps_classes(tmp_path):
    from cityseg_ros.label_spaces import get_label_space

    label_map = tmp_path / 'map.yaml'
    label_map.write_text('ignore: {id: 0, name: unknown, color: [0, 0, 0]}\n'
                         'classes:\n'
                         '  - {id: 5, name: ground, color: [1, 2, 3], train_ids: [road, '
                         'sidewalk]}\n'
                         '  - {id: 9, name: people, color: [4, 5, 6], train_ids: [person, '
                         'rider]}\n'
                         '  - {id: 7, name: cars, color: [7, 8, 9], train_ids: [car]}\n')
    space = get_label_space(label_map=str(label_map))
    data = _with_void(frames(4))
    topic = _write_space_bag(tmp_path / 'bag', data, space.map)
    result = evaluate(tmp_path / 'bag', predictions_topic=topic, label_map=str(label_map))
    ours = result.to_dict()
    # Direct count: GT labelIds -> trainIds -> the map's ids; ids 0 (unknown) not evaluated.
    gt = np.concatenate([space.map(ID_TO_TRAINID[f['gt']]).ravel() for f in data])
    pred = np.concatenate([space.map(f['pred']).ravel() for f in data])
    expected = {}
    for ident, name in ((5, 'ground'), (7, 'cars'), (9, 'people')):
        evaluated = gt != 0
        tp = np.sum((gt == ident) & (pred == ident))
        fn = np.sum(gt == ident) - tp
        fp = np.sum(evaluated & (gt != ident) & (pred == ident))
        expected[name] = tp / (tp + fp + fn)
    assert ours['class_iou'] == pytest.approx(expected, abs=0, rel=1e-15)
    assert ours['miou'] == pytest.approx(np.mean(list(expected.values())), rel=1e-15)
    assert ours['iiou'] is None and ours['category_iou'] == {}
    assert ours['label_space']['names'] == ['ground', 'cars', 'people']


def test_png_compressed_predictions_score_exactly_like_raw_ones(tmp_path):
    data = _with_void(frames(3))
    write_bag(tmp_path / 'raw', data)
    topic = _write_space_bag(tmp_path / 'png', data, lambda p: p, compressed=True)
    raw = evaluate(tmp_path / 'raw')
    png = evaluate(tmp_path / 'png', predictions_topic=topic)
    assert_same_counts(png.counts, raw.counts)
    assert scored(png.frames) == scored(raw.frames)


def test_jpeg_compressed_labels_are_refused(tmp_path):
    topic = PRED + '/compressed'
    with BagWriter(tmp_path / 'bag') as bag:
        frame = frames(1)[0]
        bag.write_compressed_image(topic, frame['pred'], 'jpeg', 'mono8', START, 'left')
        bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', START, 'left')
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(predictions_topic=topic,
                                                           instance_topic=None))
    with pytest.raises(BagError, match='must be PNG'):
        evaluator.run()


def test_camera_topic_falls_back_to_its_compressed_topic(tmp_path):
    with BagWriter(tmp_path / 'bag') as bag:
        frame = frames(1)[0]
        bag.write_compressed_image(TOPIC_LEFT_IMAGE + '/compressed', frame['left'], 'jpeg',
                                   'rgb8', START, 'left')
        bag.write_image(TOPIC_GT_LABEL_IDS, frame['gt'], 'mono8', START, 'left')
    evaluator = BagEvaluator(tmp_path / 'bag', EvalOptions(instance_topic=None))
    evaluator.check()
    assert evaluator.evaluation.topics['scored'] == TOPIC_LEFT_IMAGE + '/compressed'


def test_shards_of_another_label_space_do_not_merge(tmp_path):
    from cityseg_ros.label_spaces import get_label_space

    data = frames(4)
    topic = _write_space_bag(tmp_path / 'cat', data, get_label_space('category').map)
    parts = [evaluate(tmp_path / 'cat', predictions_topic=topic, label_space='category',
                      shard=(i, 2)) for i in range(2)]
    merged = merge_evaluations(parts)
    whole = evaluate(tmp_path / 'cat', predictions_topic=topic, label_space='category')
    assert merged.groups == whole.groups and merged.to_dict()['class_iou'] == pytest.approx(
        whole.to_dict()['class_iou'], rel=1e-12)
    write_outputs(parts[0], tmp_path / 's0')
    assert load_evaluation(tmp_path / 's0').groups == whole.groups
    other = evaluate(tmp_path / 'cat', predictions_topic=topic, label_space='labelid',
                     shard=(1, 2))
    with pytest.raises(ConfigError, match='different label spaces'):
        merge_evaluations([parts[0], other])


def test_bad_label_space_options_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match='unknown label space'):
        BagEvaluator(tmp_path / 'bag', EvalOptions(label_space='ids'))
    (tmp_path / 'map.yaml').write_text('classes: 5\n')
    with pytest.raises(ConfigError, match='map.yaml'):
        BagEvaluator(tmp_path / 'bag', EvalOptions(label_map=str(tmp_path / 'map.yaml')))


class _StubSegmenter:
    """Stands in for a Segmenter: 'predicts' the trainIds it was given for each image."""

    def __init__(self, labels):
        from types import SimpleNamespace
        self._labels = list(labels)
        self.spec = SimpleNamespace(name='stub')
        self.weights_path, self.device, self.precision, self.tta = None, 'cpu', 'fp32', 'none'
        self.input_size = (32, 64)

    def predict(self, images):
        from types import SimpleNamespace
        return [SimpleNamespace(labels=self._labels.pop(0)) for _ in images]


@pytest.mark.parametrize('space', ['labelid', 'category'])
def test_a_models_trainids_are_scored_in_the_label_space(tmp_path, space):
    from cityseg_ros.label_spaces import get_label_space

    data = _with_void(frames(3))
    write_bag(tmp_path / 'bag', data)
    topic = _write_space_bag(tmp_path / 'space', data, get_label_space(space).map)
    model = BagEvaluator(tmp_path / 'bag', EvalOptions(label_space=space)).run(
        _StubSegmenter(f['pred'] for f in data))
    recorded = evaluate(tmp_path / 'space', predictions_topic=topic, label_space=space)
    mine, theirs = model.to_dict(), recorded.to_dict()
    for key in ('miou', 'class_iou', 'category_iou', 'iiou_category', 'confusion'):
        assert mine[key] == theirs[key], key
    assert model.model.name == 'stub'
