"""The 4-step alternating schedule (freezing checked weight by weight) and Fast R-CNN mode on a proposal file."""
import json

import numpy as np
import pytest

from kdet.api import build_model, load_split, restore
from kdet.config import load_config
from kdet.errors import DataError
from kdet.training.schedules import (evaluate_fast_rcnn, read_proposals_json, train_alternating,
                                     write_proposals_json)

SIZE = 64
TINY = dict(backbone="vgg16", vgg_widths=[4, 8, 8, 8, 8], roi_pooling="align", anchor_sizes=[[16, 32, 64]],
            rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_train=32,
            rpn_post_nms_top_n_test=32, rpn_batch_size_per_image=32, representation_size=16,
            box_batch_size_per_image=32)


def make_config(tmp_path, **train):
    return load_config({
        "model": {"name": "faster_rcnn", "num_classes": 3, "image_size": [SIZE, SIZE], "max_detections": 10,
                  "args": TINY},
        "data": {"format": "shapes", "options": {"num_images": 8, "image_size": [SIZE, SIZE]},
                 "augment": {"flip": True}},
        "train": {"epochs": 1, "batch_size": 4, "steps_per_epoch": 2, "learning_rate": 0.01,
                  "output_dir": str(tmp_path / "run"), **train}})


def weights(layer):
    return [w.numpy().copy() for w in layer.weights]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_alternating_schedule_runs_four_steps_and_freezes(tmp_path):
    config = make_config(tmp_path)
    seen = {}

    def record(step, phase, a, b):
        for name, net in (("a", a), ("b", b)):
            if net is not None:
                seen[(step, phase, name)] = {part: weights(getattr(net, part))
                                             for part in ("backbone", "rpn_head", "box_head", "box_predictor")}

    result = train_alternating(config, verbose=0, on_step=record)
    assert set(result["history"]) == {"step1", "step2", "step3", "step4"}
    assert all(np.isfinite(v).all() for h in result["history"].values() for v in h.values())

    # Step 1 (network A, RPN): backbone and RPN head train; the detector head does not.
    start, end = seen[(1, "start", "a")], seen[(1, "end", "a")]
    assert not same(start["backbone"], end["backbone"]) and not same(start["rpn_head"], end["rpn_head"])
    assert same(start["box_head"], end["box_head"]) and same(start["box_predictor"], end["box_predictor"])
    # Step 2 (network B, Fast R-CNN on A's proposals): B starts from A's *initial* backbone; its RPN is unused.
    start, end = seen[(2, "start", "b")], seen[(2, "end", "b")]
    assert same(start["backbone"], seen[(1, "start", "a")]["backbone"])
    assert not same(start["backbone"], end["backbone"]) and not same(start["box_head"], end["box_head"])
    assert same(start["rpn_head"], end["rpn_head"])
    # Step 3 (B's RPN head, initialised from A's, on B's frozen shared convs).
    start, end = seen[(3, "start", "b")], seen[(3, "end", "b")]
    assert same(start["rpn_head"], seen[(1, "end", "a")]["rpn_head"])
    assert same(start["backbone"], end["backbone"]) and same(start["backbone"], seen[(2, "end", "b")]["backbone"])
    assert not same(start["rpn_head"], end["rpn_head"]) and same(start["box_head"], end["box_head"])
    # Step 4 (B's detector head only).
    start, end = seen[(4, "start", "b")], seen[(4, "end", "b")]
    assert same(start["backbone"], end["backbone"]) and same(start["rpn_head"], end["rpn_head"])
    assert not same(start["box_head"], end["box_head"]) and not same(start["box_predictor"], end["box_predictor"])

    # The unified network B is the run's checkpoint: what `kdet evaluate` restores.
    model = build_model(config)
    restore(model, config)
    assert same(weights(model), weights(result["model"]))
    assert all(layer.trainable for layer in (model.backbone, model.rpn_head, result["model"].rpn_head))

    # Fast R-CNN mode on the step-1 proposal file: evaluation on given proposals.
    proposals = json.loads(open(result["proposals"]).read())
    assert proposals["bounding_box_format"] == "yxyx" and len(proposals["proposals"]) == 8
    figures = evaluate_fast_rcnn(config, result["proposals"], split="train", model=result["model"])
    assert figures["num_images"] == 8 and 0.0 <= figures["mAP50"] <= 1.0 and "AP" in figures


def test_proposal_files_round_trip_and_fail_clearly(tmp_path):
    config = make_config(tmp_path)
    data = load_split(config, "train")
    boxes = {r.image_id: np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32) for r in data.records[:3]}
    path = write_proposals_json(tmp_path / "p.json", data, boxes, bounding_box_format="xyxy")
    stored = json.loads(path and open(path).read())
    assert stored["proposals"]["0"][0] == [2.0, 1.0, 40.0, 30.0]
    back = read_proposals_json(path, data)
    assert set(back) == set(boxes) and all(np.allclose(back[i], boxes[i]) for i in boxes)

    stored["proposals"]["BloodImage_99999.jpg"] = [[0, 0, 1, 1]]
    (tmp_path / "bad.json").write_text(json.dumps(stored))
    with pytest.raises(DataError, match=r"bad.json.*1 image\(s\) not in the dataset split: BloodImage_99999.jpg"):
        read_proposals_json(tmp_path / "bad.json", data)
    (tmp_path / "broken.json").write_text('{"boxes": []}')
    with pytest.raises(DataError, match="broken.json.*not a proposal file"):
        read_proposals_json(tmp_path / "broken.json", data)
    with pytest.raises(DataError, match="missing.json.*not found"):
        read_proposals_json(tmp_path / "missing.json", data)
