"""The builtins twins really are TFLite builtins: one graph with every twin converts with TFLITE_BUILTINS only,
runs in the LiteRT interpreter and gives the TF results (NMS counts included, the TFLite padding trap)."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops import builtins_only, combined_nms, max_pool_with_argmax, max_unpool, multiscale_roi_align, roi_align

SHAPES = {"features": (2, 12, 14, 4), "coarse": (2, 6, 7, 4), "boxes": (10, 4), "box_indices": (10,),
          "det_boxes": (2, 30, 4), "det_scores": (2, 30, 3), "image": (2, 9, 10, 4)}


def all_twins(features, coarse, boxes, box_indices, det_boxes, det_scores, image):
    values, argmax = max_pool_with_argmax(image)
    detections = combined_nms(det_boxes, det_scores, 30, 0.5, 0.8)
    return {
        "fixed": roi_align(features, boxes, box_indices, 3, 0.25, 2, aligned=True),
        "adaptive": roi_align(features, boxes, box_indices, 3, 0.25, -1, aligned=True),
        "multiscale": multiscale_roi_align([features, coarse], boxes, box_indices, 2, (4, 8)),
        "unpooled": max_unpool(values, argmax, tf.shape(image)),
        **detections,
    }


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 40, (10, 2))
    det_corner = rng.uniform(0, 100, (2, 30, 2))
    return {
        "features": rng.normal(0, 1, SHAPES["features"]).astype(np.float32),
        "coarse": rng.normal(0, 1, SHAPES["coarse"]).astype(np.float32),
        "boxes": np.concatenate([corner, corner + rng.uniform(1, 30, (10, 2))], axis=1).astype(np.float32),
        "box_indices": rng.integers(0, 2, 10).astype(np.int32),
        "det_boxes": np.concatenate([det_corner, det_corner + rng.uniform(5, 30, (2, 30, 2))], -1).astype(np.float32),
        "det_scores": rng.uniform(0, 1, SHAPES["det_scores"]).astype(np.float32),
        "image": rng.normal(0, 1, SHAPES["image"]).astype(np.float32),
    }


@pytest.mark.slow
def test_builtins_twins_convert_and_match_tf():
    from ai_edge_litert.interpreter import Interpreter

    class Twins(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(SHAPES[name], tf.int32 if name == "box_indices" else tf.float32,
                                                    name=name) for name in SHAPES])
        def run(self, features, coarse, boxes, box_indices, det_boxes, det_scores, image):
            return all_twins(features, coarse, boxes, box_indices, det_boxes, det_scores, image)

    module = Twins()
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # fails loudly on any non-builtin op
    interpreter = Interpreter(model_content=converter.convert(), num_threads=2)
    run_tflite = interpreter.get_signature_runner()
    for seed in (0, 1):
        feed = inputs(seed)
        expected = {k: v.numpy() for k, v in all_twins(**feed).items()}  # the default TF paths
        result = run_tflite(**feed)
        assert set(result) == set(expected)
        np.testing.assert_array_equal(result["num_detections"], expected["num_detections"])
        assert 0 < expected["num_detections"].min() and expected["num_detections"].max() < 30  # padding matters
        for key in expected:
            np.testing.assert_allclose(result[key], expected[key], atol=1e-4, err_msg=key)


def test_zero_area_boxes_in_tflite_nms_are_kept_once():
    """TFLite's NMS V5 kernel selects a zero-area box over and over until the output is full ([0, 1, 1, 1, 1, 1]
    here; it turned an exported SSD's detections into one repeated box). kdet's NMS routes zero-area boxes around the
    kernel, so LiteRT gives TF's answer: each zero-area box once, nothing suppressed by it."""
    from ai_edge_litert.interpreter import Interpreter
    from kdet.ops import nms

    boxes = np.array([[0, 0, 10, 10], [106, 300, 160, 300], [20, 20, 30, 30], [106, 300, 160, 300],
                      [50, 50, 60, 60], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32)

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([6, 4], name="b"), tf.TensorSpec([6], name="s")])
        def run(self, b, s):
            return {"kept": nms(b, s, 0.5)}

    module = Module()
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    kept = interpreter.get_signature_runner()(b=boxes, s=scores)["kept"]
    np.testing.assert_array_equal(nms(boxes, scores, 0.5).numpy(), [0, 1, 2, 3, 4])  # box 5 overlaps box 0
    np.testing.assert_array_equal(kept, [0, 1, 2, 3, 4])


_RUN_REFERENCE_KERNELS = """
import sys, numpy as np, tensorflow as tf
interpreter = tf.lite.Interpreter(model_path=sys.argv[1], experimental_op_resolver_type=(
    tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES))
run = interpreter.get_signature_runner()
feeds = np.load(sys.argv[2])
outputs = {}
for i in range(int(feeds["count"])):
    outputs[f"pooled{i}"] = run(features=feeds[f"features{i}"], coarse=feeds[f"coarse{i}"], boxes=feeds[f"boxes{i}"],
                                box_indices=feeds[f"box_indices{i}"])["pooled"]
np.savez(sys.argv[3], **outputs)
"""


def test_multiscale_twin_with_empty_levels_runs_on_tflite_reference_kernels(tmp_path):
    """A pyramid level without RoIs (or no RoIs at all) on TF Lite's reference kernels, which int8 calibration runs
    (tf.lite.Interpreter without delegates): the regrouping's SCATTER_ND once had a zero-size output there, and the
    kernel divides by the output's dimensions: SIGFPE, the process died. Run in a child process for that reason."""
    import subprocess
    import sys

    class Module(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 12, 14, 4], name="features"),
                                      tf.TensorSpec([1, 6, 7, 4], name="coarse"),
                                      tf.TensorSpec([None, 4], name="boxes"),
                                      tf.TensorSpec([None], tf.int32, name="box_indices")])
        def run(self, features, coarse, boxes, box_indices):
            return {"pooled": multiscale_roi_align([features, coarse], boxes, box_indices, 2, (4, 8),
                                                   canonical_scale=8, canonical_level=2)}

    module = Module()
    with builtins_only():
        concrete = module.run.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    (tmp_path / "model.tflite").write_bytes(converter.convert())
    rng = np.random.default_rng(0)
    small = np.array([[0, 0, 4, 4], [8, 8, 14, 12], [20, 30, 26, 34]], np.float32)       # all on the fine level
    large = np.array([[0, 0, 40, 48], [4, 8, 30, 50]], np.float32)                        # all on the coarse level
    feeds, expected = {}, []
    for i, boxes in enumerate((small, large, np.zeros((0, 4), np.float32))):
        feed = {"features": rng.normal(0, 1, (1, 12, 14, 4)).astype(np.float32),
                "coarse": rng.normal(0, 1, (1, 6, 7, 4)).astype(np.float32), "boxes": boxes,
                "box_indices": np.zeros(len(boxes), np.int32)}
        feeds.update({f"{k}{i}": v for k, v in feed.items()})
        expected.append(module.run(**feed)["pooled"].numpy())  # the default (CropAndResize) path
    np.savez(tmp_path / "feeds.npz", count=3, **feeds)
    run = subprocess.run([sys.executable, "-c", _RUN_REFERENCE_KERNELS, str(tmp_path / "model.tflite"),
                          str(tmp_path / "feeds.npz"), str(tmp_path / "out.npz")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, f"reference kernels: exit {run.returncode}\n{run.stderr[-2000:]}"
    result = np.load(tmp_path / "out.npz")
    assert [len(e) for e in expected] == [3, 2, 0]
    for i, want in enumerate(expected):
        np.testing.assert_allclose(result[f"pooled{i}"], want, atol=1e-4)
