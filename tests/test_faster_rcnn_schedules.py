"""The 4-step alternating schedule (freezing checked weight by weight), Fast R-CNN mode on a proposal file, and
both through the one training path: `kdet.train` with `train.schedule`, user callbacks, `--resume`, precision."""
import json

import keras
import numpy as np
import pytest

import kdet
from kdet.build import build_model, load_split, restore
from kdet.config import load_config
from kdet.errors import DataError
from kdet.training.run import Session, make_strategy
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

    data = load_split(config, "train")
    network_b = train_alternating(Session(config, make_strategy("none"), data.class_names), data,
                                  verbose=0, on_step=record)
    result = {"model": network_b, "proposals": str(tmp_path / "run" / "proposals_step1.json")}
    for step in (1, 2, 3, 4):
        rows = [json.loads(line) for line in (tmp_path / "run" / f"step{step}" / "history.jsonl").open()]
        assert len(rows) == 1 and rows[0]["steps"] == 2 and np.isfinite(rows[0]["loss"])

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


class _Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_train_batch_end(self, batch, logs=None):
        self.count += 1


@pytest.mark.slow
def test_alternating_through_kdet_train_takes_callbacks_and_resumes(tmp_path):
    config = make_config(tmp_path, schedule="alternating")
    counter = _Batches()
    result = kdet.train(config, callbacks=[counter], verbose=0)
    assert counter.count == 4 * 2  # four steps of one epoch of two batches, each seen by the user's callback
    assert result["model"].class_names == ["circle", "square", "triangle"]
    model = keras.saving.load_model(result["model_file"])
    assert same(weights(model), weights(result["model"]))

    again = _Batches()  # resume with nothing left to do: no step trains again, the result is the same network
    resumed = kdet.train(config, resume=True, callbacks=[again], verbose=0)
    assert again.count == 0 and same(weights(resumed["model"]), weights(result["model"]))

    longer = _Batches()  # two epochs per step now: each step runs only its second epoch
    load = load_config(config.to_dict(), ["train.epochs=2"])
    kdet.train(load, resume=True, callbacks=[longer], verbose=0)
    assert longer.count == 4 * 2
    for step in (1, 2, 3, 4):
        rows = [json.loads(line) for line in (tmp_path / "run" / f"step{step}" / "history.jsonl").open()]
        assert [row["epoch"] for row in rows] == [1, 2]


@pytest.mark.slow
def test_fast_rcnn_schedule_under_mixed_bfloat16(tmp_path):
    config = make_config(tmp_path)
    data = load_split(config, "train")
    boxes = {r.image_id: np.array([[1, 2, 30, 40], [5, 5, 40, 50]], np.float32) for r in data.records}
    path = write_proposals_json(tmp_path / "p.json", data, boxes)
    config = load_config(config.to_dict(), ["train.schedule=fast_rcnn", f"train.proposals={path}",
                                            "train.mixed_precision=mixed_bfloat16"])
    result = kdet.train(config, verbose=0)
    assert result["model"].dtype_policy.name == "mixed_bfloat16"
    rows = [json.loads(line) for line in (tmp_path / "run" / "fast_rcnn" / "history.jsonl").open()]
    assert rows[-1]["steps"] == 2 and np.isfinite(rows[-1]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"
