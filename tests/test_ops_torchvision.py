"""kdet.ops against torchvision.ops outputs stored in tests/fixtures/ops_torchvision.npz.

The fixture comes from tests/reference/make_torchvision_ops_fixtures.py (needs torch; this test does not). It is in
torchvision's conventions: boxes xyxy, features NCHW, BoxCoder deltas (dx, dy, dw, dh), Matcher on [gt, anchors].
"""
from pathlib import Path

import numpy as np
import pytest

from kdet.ops import (batched_nms, box_iou, builtins_only, decode_boxes, encode_boxes, match, multilevel_anchors,
                      multiscale_roi_align, nms, roi_align, roi_pool)

FIXTURE = Path(__file__).parent / "fixtures" / "ops_torchvision.npz"
ANCHOR_CASES = [
    ((4, 8, 16, 32, 64), ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0)),
    ((8, 16, 32), ((24, 40), (64,), (100,)), (0.5, 1.0, 2.0)),
    ((16,), ((48, 96, 181),), (0.3, 1.0, 1.7, 3.1)),
]


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return dict(data)


def yxyx(boxes):
    return boxes[..., [1, 0, 3, 2]]


def nhwc(features):
    return np.transpose(features, [0, 2, 3, 1])


def test_box_iou(fixture):
    result = box_iou(yxyx(fixture["iou_boxes1"]), yxyx(fixture["iou_boxes2"])).numpy()
    np.testing.assert_allclose(result, fixture["iou"], atol=1e-6)


@pytest.mark.parametrize("case", range(3))
def test_nms(fixture, case):
    kept = nms(yxyx(fixture[f"nms{case}_boxes"]), fixture[f"nms{case}_scores"], float(fixture[f"nms{case}_threshold"]))
    np.testing.assert_array_equal(kept.numpy(), fixture[f"nms{case}_keep"])


@pytest.mark.parametrize("case", range(2))
def test_batched_nms(fixture, case):
    kept = batched_nms(yxyx(fixture[f"bnms{case}_boxes"]), fixture[f"bnms{case}_scores"],
                       fixture[f"bnms{case}_classes"], float(fixture[f"bnms{case}_threshold"]))
    np.testing.assert_array_equal(kept.numpy(), fixture[f"bnms{case}_keep"])


@pytest.mark.parametrize("builtins", [False, True])
@pytest.mark.parametrize("case", range(11))
def test_roi_align(fixture, case, builtins):
    out_h, out_w, sampling_ratio, aligned = (int(v) for v in fixture[f"roialign{case}_config"])
    with builtins_only(builtins):
        # one RoI reaches 23 cells past a 21-cell map: allow its ceil(23 / 3) = 8 samples per bin exactly
        result = roi_align(nhwc(fixture["roi_features"]), yxyx(fixture["roi_boxes"]), fixture["roi_batch_index"],
                           (out_h, out_w), 0.5, sampling_ratio, bool(aligned), max_sampling_ratio=8).numpy()
    np.testing.assert_allclose(result, nhwc(fixture[f"roialign{case}_out"]), atol=1e-4)


@pytest.mark.parametrize("case", range(3))
def test_roi_pool(fixture, case):
    result = roi_pool(nhwc(fixture["roi_features"]), yxyx(fixture["roi_boxes"]), fixture["roi_batch_index"],
                      tuple(int(v) for v in fixture[f"roipool{case}_config"]), float(fixture[f"roipool{case}_scale"]))
    np.testing.assert_allclose(result.numpy(), nhwc(fixture[f"roipool{case}_out"]), atol=1e-6)


@pytest.mark.parametrize("builtins", [False, True])
def test_multiscale_roi_align(fixture, builtins):
    levels = [nhwc(fixture[f"ms_features{level}"]) for level in range(4)]
    with builtins_only(builtins):
        result = multiscale_roi_align(levels, yxyx(fixture["ms_boxes"]), fixture["ms_batch_index"], 7, (4, 8, 16, 32))
    np.testing.assert_allclose(result.numpy(), nhwc(fixture["ms_out"]), atol=1e-4)


@pytest.mark.parametrize("case", range(3))
def test_anchor_generator(fixture, case):
    strides, sizes, ratios = ANCHOR_CASES[case]
    np.testing.assert_array_equal(fixture[f"anchors{case}_strides"], strides)
    result = multilevel_anchors(tuple(fixture[f"anchors{case}_image_size"]), strides, sizes, ratios)
    np.testing.assert_array_equal(result.numpy(), yxyx(fixture[f"anchors{case}_out"]))


def test_box_coder(fixture):
    weights = (10.0, 10.0, 5.0, 5.0)  # torchvision (wx, wy, ww, wh) = kdet (wy, wx, wh, ww) here
    deltas = encode_boxes(yxyx(fixture["coder_gt"]), yxyx(fixture["coder_anchors"]), weights).numpy()
    np.testing.assert_allclose(deltas, yxyx(fixture["coder_deltas"]), atol=1e-5)
    decoded = decode_boxes(yxyx(fixture["coder_codes"]), yxyx(fixture["coder_anchors"]), weights).numpy()
    np.testing.assert_allclose(decoded, yxyx(fixture["coder_decoded"]), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matcher(fixture, allow_low_quality):
    iou = box_iou(yxyx(fixture["matcher_proposals"]), yxyx(fixture["matcher_gt"]))
    result = match(iou, 0.7, 0.3, allow_low_quality).numpy()
    np.testing.assert_array_equal(result, fixture[f"matcher_low_quality{int(allow_low_quality)}"])
