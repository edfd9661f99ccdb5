"""The forms Keras Conv2D / Dense layers take while a TFLite graph is traced, so that LiteRT's XNNPACK runs them fast.

    with xnnpack_layer_forms(split=True):    # kdet.export.tflite enters it around the builtins-only trace
        ...trace...

Both forms compute the same function with the same weights (float rounding only); the TF / Keras path never sees them.

- Deep contractions split (float exports only, `split=True`): XNNPACK's fp32 GEMM (LiteRT 2.3) runs a Dense or
  convolution whose contraction depth (kh * kw * input channels) is far above ~4.6k at 0.65-0.8x the speed of the
  same layer cut into input-channel slices summed with ADD, while TensorFlow's oneDNN runs it at full speed
  (benchmarks/bench_tflite_contractions.py: Faster R-CNN's fc6, depth 12544: TFLite/TF 1.46 -> 1.04; a deep 3x3
  convolution takes the Winograd form below instead). int8 keeps the layers whole: each partial sum would be
  requantised.
- Dilated convolutions as one CONV_2D with its dilation: TF's Keras Conv2D with dilation_rate > 1 emits
  SPACE_TO_BATCH_ND + CONV_2D + BATCH_TO_SPACE_ND, which the converter folds into a dilated CONV_2D only when every
  shape is static; with kdet's default dynamic batch the pair stayed, outside XNNPACK, splitting its graph at every
  dilated layer (FCN ResNet-50's layer3 / layer4, SSD300's conv6). `tf.nn.conv2d(..., dilations=d)` converts to the
  dilated CONV_2D directly.
- 3x3 stride-1 convolutions with at least WINOGRAD_MIN_CHANNELS input and output channels in Winograd's F(2x2, 3x3)
  form (float exports only, kdet.ops.winograd): XNNPACK has no fp32 Winograd kernel; in this form they take 0.43-0.81x
  of TF's time where XNNPACK's direct kernel takes 0.80-1.30x (benchmarks/bench_tflite_contractions.py, 7 rounds:
  FPN P2 output conv 1.10 -> 0.73, Mask R-CNN's mask-head conv 1.19 -> 0.81, ResNet-50 layer2 / layer4 0.97 / 0.80
  -> 0.59 / 0.49, SSD300's head conv 1.03 -> 0.54, FCN's classifier conv 1.30 -> 0.43, formerly split: 0.82). At 64
  channels the transforms cost what they save (ResNet-50 layer1: 0.99 direct, 1.01 in this form), so it stays direct;
  so do filters wider than 256 x 256 on maps of fewer than 64 2x2 tiles (WINOGRAD_MIN_TILES: YOLOv2 at 416, whose
  13x13 1024-channel layers have 49, ran 270 ms all-Winograd, 173 ms direct, 155 ms with this rule).
Subclasses of Conv2D / Dense that define their own `call` keep it.
"""
import contextlib
import math

import keras
import tensorflow as tf

from kdet.ops.winograd import conv3x3_winograd, output_tiles, winograd_filter

MAX_CONTRACTION_DEPTH = 4608  # ResNet's 3x3x512 convolutions: as fast as oneDNN in XNNPACK unsplit
WINOGRAD_MIN_CHANNELS = 128  # below, the transforms cost about what the 2.25x fewer multiplications save
# ... and at least this many 2x2 output tiles per image unless the filters are at most 256 x 256: Winograd streams 16
# filter matrices (16/9 of the kernel) every call, and on a small map with wide filters that, not arithmetic, is the
# cost (YOLOv2's 13x13 1024-channel layers, 49 tiles: the model 1.56x slower than with direct convolutions).
WINOGRAD_MIN_TILES = 64
WINOGRAD_SMALL_FILTERS = 256 * 256
_ORIGINAL_CALLS = {keras.layers.Conv2D: keras.layers.Conv2D.call, keras.layers.Dense: keras.layers.Dense.call}
_SETTINGS = {"split": True}


def contraction_parts(depth, channels, max_depth=MAX_CONTRACTION_DEPTH):
    """The fewest equal input-channel slices (a divisor of `channels`) whose depth is at most max_depth (1: none)."""
    parts = max(1, -(-depth // max_depth))
    while channels % parts:
        parts += 1
    return parts


def _finish(layer, outputs):
    if layer.use_bias:
        outputs = outputs + layer.bias
    return layer.activation(outputs) if layer.activation is not None else outputs


def _winograd_applies(layer, inputs):
    """True for a float32 3x3 stride-1 Conv2D of >= WINOGRAD_MIN_CHANNELS in and out on a static H x W, with
    filters of at most WINOGRAD_SMALL_FILTERS weights or at least WINOGRAD_MIN_TILES tiles."""
    kh, kw, channels, filters = layer.kernel.shape
    return (_SETTINGS["split"] and (kh, kw) == (3, 3) and tuple(layer.strides) == (1, 1)
            and tuple(layer.dilation_rate) == (1, 1) and layer.groups == 1
            and min(channels, filters) >= WINOGRAD_MIN_CHANNELS and layer.data_format == "channels_last"
            and layer.compute_dtype == "float32" and None not in tuple(inputs.shape[1:3])
            and (channels * filters <= WINOGRAD_SMALL_FILTERS
                 or math.prod(output_tiles(*inputs.shape[1:3], layer.padding)) >= WINOGRAD_MIN_TILES))


def _conv_call(self, inputs):
    """keras.layers.Conv2D.call in its XNNPACK form. inputs [B, H, W, Cin] -> [B, H', W', filters]."""
    if _winograd_applies(self, inputs):
        return _finish(self, conv3x3_winograd(inputs, winograd_filter(self.kernel), self.padding))
    kh, kw, channels, _ = self.kernel.shape
    parts = contraction_parts(kh * kw * channels, channels) if _SETTINGS["split"] else 1
    dilated = tuple(self.dilation_rate) != (1, 1)
    if (parts == 1 and not dilated) or self.groups != 1 or self.data_format != "channels_last" \
            or self.compute_dtype != "float32":
        return _ORIGINAL_CALLS[keras.layers.Conv2D](self, inputs)
    outputs = None
    pieces = zip(tf.split(inputs, parts, axis=-1), tf.split(self.kernel, parts, axis=2)) if parts > 1 else \
        [(inputs, self.kernel)]  # a one-way SPLIT would be an op XNNPACK does not take
    for x, kernel in pieces:
        if dilated:
            y = tf.nn.conv2d(x, kernel, self.strides, self.padding.upper(), dilations=self.dilation_rate)
        else:
            y = self.convolution_op(x, kernel)
        outputs = y if outputs is None else outputs + y
    return _finish(self, outputs)


def _dense_call(self, inputs, training=None):
    """keras.layers.Dense.call in its XNNPACK form (a sum of matmuls over input slices). inputs [..., Cin]."""
    depth = self.kernel.shape[0]
    parts = contraction_parts(depth, depth) if _SETTINGS["split"] else 1
    if parts == 1 or self.quantization_mode is not None or self.lora_enabled or self.compute_dtype != "float32":
        return _ORIGINAL_CALLS[keras.layers.Dense](self, inputs, training=training)
    outputs = None
    for x, kernel in zip(tf.split(inputs, parts, axis=-1), tf.split(self.kernel, parts, axis=0)):
        y = keras.ops.matmul(x, kernel)
        outputs = y if outputs is None else outputs + y
    return _finish(self, outputs)


@contextlib.contextmanager
def xnnpack_layer_forms(split=True):
    """While active (a TFLite trace), Conv2D / Dense layers take the forms above; split=False (int8): neither
    slices nor Winograd convolutions (each partial sum would be requantised), only the dilated CONV_2D."""
    previous = dict(_SETTINGS)
    _SETTINGS["split"] = bool(split)
    keras.layers.Conv2D.call, keras.layers.Dense.call = _conv_call, _dense_call
    try:
        yield
    finally:
        _SETTINGS.update(previous)
        for cls, call in _ORIGINAL_CALLS.items():
            cls.call = call
