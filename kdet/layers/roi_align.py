"""Keras layers over kdet.ops RoI pooling: RoIAlign (one feature map) and MultiScaleRoIAlign (FPN levels).

Both take either flat RoIs (boxes [K, 4] + box_indices [K]) or per-image RoIs (boxes [B, R, 4], the fixed-shape
form two-stage Keras models use), in input-image pixels, yxyx. The TFLite twin is chosen by `kdet.ops` itself.
Both compute in float32 unless given another dtype, whatever the global policy (torchvision's autocast does the
same): under mixed_bfloat16 Keras would otherwise cast the boxes to bfloat16, a pixel off at a few hundred pixels.
"""
import keras
import tensorflow as tf

from kdet.ops.roi_align import multiscale_roi_align, roi_align


def _pair(value):
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _flatten_rois(boxes, box_indices):
    """-> (boxes [K, 4], box_indices [K], batched) where batched means boxes came as [B, R, 4]."""
    if boxes.shape.rank == 3:
        if box_indices is not None:
            raise ValueError("box_indices must be omitted when boxes are [B, R, 4]")
        batch, per_image = tf.shape(boxes)[0], tf.shape(boxes)[1]
        indices = tf.repeat(tf.range(batch), per_image)
        return tf.reshape(boxes, [-1, 4]), indices, True
    if box_indices is None:
        raise ValueError("box_indices [K] is needed with flat boxes [K, 4]")
    return boxes, box_indices, False


def _restore(pooled, boxes, batched):
    if not batched:
        return pooled
    shape = tf.shape(boxes)
    return tf.reshape(pooled, tf.concat([shape[:2], tf.shape(pooled)[1:]], axis=0))


def _output_spec(boxes, output_size, channels, dtype):
    out_h, out_w = output_size
    leading = tuple(boxes.shape[:2]) if len(boxes.shape) == 3 else (boxes.shape[0],)
    return keras.KerasTensor(leading + (out_h, out_w, channels), dtype=dtype)


@keras.saving.register_keras_serializable(package="kdet")
class RoIAlign(keras.layers.Layer):
    """torchvision.ops.RoIAlign as a layer: call(features [B, H, W, C], boxes, box_indices=None).

    Args are those of `kdet.ops.roi_align`. Returns [K, out_h, out_w, C] for flat RoIs, [B, R, out_h, out_w, C]
    for per-image RoIs.
    """

    def __init__(self, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False, max_sampling_ratio=None,
                 **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.output_size = _pair(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.max_sampling_ratio = None if max_sampling_ratio is None else int(max_sampling_ratio)

    def call(self, features, boxes, box_indices=None):
        flat_boxes, indices, batched = _flatten_rois(boxes, box_indices)
        pooled = roi_align(features, flat_boxes, indices, self.output_size, self.spatial_scale, self.sampling_ratio,
                           self.aligned, self.max_sampling_ratio)
        return _restore(pooled, boxes, batched)

    def compute_output_spec(self, features, boxes, box_indices=None):
        return _output_spec(boxes, self.output_size, features.shape[-1], self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size), spatial_scale=self.spatial_scale,
                      sampling_ratio=self.sampling_ratio, aligned=self.aligned,
                      max_sampling_ratio=self.max_sampling_ratio)
        return config


@keras.saving.register_keras_serializable(package="kdet")
class MultiScaleRoIAlign(keras.layers.Layer):
    """torchvision.ops.MultiScaleRoIAlign as a layer: call(features_by_level, boxes, box_indices=None).

    features_by_level: list of [B, H_l, W_l, C], finest first, with the given strides (powers of two).
    """

    def __init__(self, output_size, strides, sampling_ratio=2, canonical_scale=224, canonical_level=4,
                 aligned=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.output_size = _pair(output_size)
        self.strides = tuple(int(s) for s in strides)
        self.sampling_ratio = int(sampling_ratio)
        self.canonical_scale = float(canonical_scale)
        self.canonical_level = int(canonical_level)
        self.aligned = bool(aligned)

    def call(self, features_by_level, boxes, box_indices=None):
        flat_boxes, indices, batched = _flatten_rois(boxes, box_indices)
        pooled = multiscale_roi_align(list(features_by_level), flat_boxes, indices, self.output_size, self.strides,
                                      self.sampling_ratio, self.canonical_scale, self.canonical_level, self.aligned)
        return _restore(pooled, boxes, batched)

    def compute_output_spec(self, features_by_level, boxes, box_indices=None):
        return _output_spec(boxes, self.output_size, features_by_level[0].shape[-1], self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(output_size=list(self.output_size), strides=list(self.strides),
                      sampling_ratio=self.sampling_ratio, canonical_scale=self.canonical_scale,
                      canonical_level=self.canonical_level, aligned=self.aligned)
        return config
