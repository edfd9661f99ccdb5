"""ONNX export through tf2onnx: parity with Keras (counts included), NMS as ONNX NonMaxSuppression."""
import onnx
import pytest

from kdet.export import export_onnx, load_runner
from tests.testing import TinyRoiDetector, compare_detections, keras_outputs, make_tiny_detector

pytestmark = pytest.mark.slow


def test_grid_detector_matches_keras_and_uses_onnx_nms(tmp_path):
    model, images = make_tiny_detector(batch=3, class_names=["red cell", "white cell", "plättchen"])
    path = export_onnx(model, tmp_path / "sub" / "grid.onnx", opset=17)
    reference = keras_outputs(model, images)
    counts = reference["num_detections"]
    assert 0 < counts.min() and counts.max() < model.max_detections and len(set(counts)) > 1, counts
    runner = load_runner(path)
    compare_detections(reference, runner(images), box_atol=1e-3, name="onnx")
    compare_detections(keras_outputs(model, images[2:]), runner(images[2:]), name="onnx batch 1")
    graph = onnx.load(path)
    assert [i.name for i in graph.graph.input] == ["images"]
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert sorted(o.name for o in graph.graph.output) == ["boxes", "classes", "num_detections", "scores"]
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    assert "NonMaxSuppression" in {node.op_type for node in graph.graph.node}
    # Class names: metadata_props, read back by the runner.
    assert {p.key: p.value for p in graph.metadata_props} == {
        "kdet_class_names": '["red cell", "white cell", "plättchen"]'}
    assert runner.class_names == ["red cell", "white cell", "plättchen"]


def test_roi_detector_matches_keras(tmp_path):
    model, images = make_tiny_detector(TinyRoiDetector, batch=2, quantile=0.9)
    path = export_onnx(model, tmp_path / "roi.onnx", opset=13)
    runner = load_runner(path)
    compare_detections(keras_outputs(model, images), runner(images), box_atol=1e-3, name="onnx roi")
    assert runner.class_names is None and not onnx.load(path).metadata_props  # a model without names
