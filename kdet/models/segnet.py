"""The lecture's downsampling / upsampling encoder-decoder with a selectable unpooling; SegNet with max-unpooling.

Encoder: stages of (3x3 conv + BN + ReLU) x n then a 2x2 max-pool, halving the resolution (SegNet: VGG-16's 13
convolutions, Badrinarayanan et al., TPAMI 2017). Decoder: the mirror image, each stage first upsampling x2 with
the chosen unpooling, then its convolutions; a 1x1 convolution scores the classes at full resolution.

    unpooling = "max"           SegNet: values go back where the encoder's max-pool found its maxima (the pooling
                                indices are the only thing passed from encoder to decoder)
                "nearest"       each value fills its 2x2 block
                "bed_of_nails"  each value at its block's top-left, zeros elsewhere
                "bilinear"      bilinear interpolation
                "transposed"    learnable 4x4 stride-2 transposed convolution, initialised to bilinear

So the variants differ only in how the decoder upsamples, which is what the unpooling benchmark compares. The input
is zero-padded (after normalisation, bottom / right) to a multiple of 2^stages and the logits cut back, so every
variant sees the same geometry; any input size works, the logits have the input's size.
"""
import keras
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.layers.unpooling import MaxPoolingWithArgmax2D
from kdet.layers.upsampling import (BedOfNailsUnpooling2D, BilinearUpsampling2D, NearestUnpooling2D,
                                    TransposedConvUpsampling2D)
from kdet.models.segmentation_base import SemanticSegmenter
from kdet.ops.images import image_hw
from kdet.ops.unpool import max_unpool

UNPOOLING = ("max", "nearest", "bed_of_nails", "bilinear", "transposed")
SEGNET_WIDTHS = (64, 128, 256, 512, 512)
SEGNET_CONVS = (2, 2, 3, 3, 3)


def _conv_bn_relu(width, name):
    return [keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv"),
            keras.layers.BatchNormalization(name=f"{name}_bn")]


def _max_unpool_like(values, argmax, reference):
    """kdet.ops max_unpool of values [B, h, w, C] to the pooled tensor's size (reference [B, H, W, C]).

    The op, not the MaxUnpooling2D layer: the layer pins its static shape with tf.ensure_shape, which TFLite has no
    builtin for (EnsureShape fails the builtins-only conversion). The op's builtins twin pads by amounts computed
    from the output shape at run time, which leaves every dimension unknown to the TFLite converter (and Conv2D
    without a kernel); a reshape to the reference's size gives the converter the shape back (static in an export,
    which traces at the model's image_size; scalar tensors when the input size is unknown).
    """
    height, width = image_hw(reference)
    channels = values.shape[3]
    unpooled = max_unpool(values, argmax, [tf.shape(values)[0], height, width, channels], 2)
    return tf.reshape(unpooled, [-1, height, width, channels])


@keras.saving.register_keras_serializable(package="kdet")
class EncoderDecoder(SemanticSegmenter):
    """Args:
        num_classes: foreground classes (the model predicts num_classes + 1, 0 = background).
        image_size: (H, W), any sizes.
        unpooling: one of UNPOOLING (see the module docstring).
        widths: channels of the encoder stages (SegNet: 64, 128, 256, 512, 512).
        convs_per_stage: convolutions per encoder stage, mirrored in the decoder (SegNet: 2, 2, 3, 3, 3).
        class_weights, ignore_index: see SemanticSegmenter (SegNet trains with median frequency weights).

    call(images [B, H, W, 3]) -> {"logits": [B, H, W, num_classes + 1]}.
    """

    def __init__(self, num_classes, image_size=(128, 128), max_detections=100, unpooling="max",
                 widths=SEGNET_WIDTHS, convs_per_stage=SEGNET_CONVS, class_weights=None, ignore_index=255, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections,
                         class_weights=class_weights, ignore_index=ignore_index, **kwargs)
        if unpooling not in UNPOOLING:
            raise ConfigError(f"unpooling {unpooling!r}; choose one of {', '.join(UNPOOLING)}")
        if len(widths) != len(convs_per_stage) or not widths:
            raise ConfigError(f"widths {list(widths)} and convs_per_stage {list(convs_per_stage)} must have the "
                              "same, non-zero length")
        self.unpooling = unpooling
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = tuple(int(c) for c in convs_per_stage)
        self.encoder = []
        for i, (width, count) in enumerate(zip(self.widths, self.convs_per_stage), start=1):
            convs = [_conv_bn_relu(width, f"encoder{i}_{j}") for j in range(1, count + 1)]
            pool = keras.layers.MaxPooling2D(2, name=f"encoder{i}_pool")
            argmax = MaxPoolingWithArgmax2D(2, name=f"encoder{i}_argmax") if unpooling == "max" else None
            self.encoder.append((convs, pool, argmax))
        # Decoder stage i mirrors encoder stage i (deepest first); its last conv narrows to the next stage's width.
        self.decoder = []
        for i in range(len(self.widths), 0, -1):
            width, count = self.widths[i - 1], self.convs_per_stage[i - 1]
            out_width = self.widths[i - 2] if i > 1 else self.widths[0]
            unpool = self._make_unpooling(width, f"decoder{i}_unpool")
            convs = [_conv_bn_relu(width if j < count else out_width, f"decoder{i}_{j}") for j in range(1, count + 1)]
            self.decoder.append((unpool, convs))
        self.classifier = keras.layers.Conv2D(self.num_mask_classes, 1, name="classifier")

    def _make_unpooling(self, channels, name):
        if self.unpooling == "max":
            return _max_unpool_like
        if self.unpooling == "nearest":
            return NearestUnpooling2D(2, name=name)
        if self.unpooling == "bed_of_nails":
            return BedOfNailsUnpooling2D(2, name=name)
        if self.unpooling == "bilinear":
            return BilinearUpsampling2D(2, name=name)
        return TransposedConvUpsampling2D(channels, 2, name=name)

    @staticmethod
    def _run_convs(convs, x, training):
        for conv, norm in convs:
            x = tf.nn.relu(norm(conv(x), training=training))
        return x

    def call(self, images, training=False):
        height, width = image_hw(images)
        multiple = 2 ** len(self.widths)
        x = self.normalize(images)
        x = tf.pad(x, [[0, 0], [0, (-height) % multiple], [0, (-width) % multiple], [0, 0]])
        skips = []  # (pre-pool features, argmax or None) of each encoder stage
        for convs, pool, argmax_pool in self.encoder:
            x = self._run_convs(convs, x, training)
            argmax = None
            if argmax_pool is not None:
                # Only the indices are taken from max_pool_with_argmax: its int32-index gradient has no CPU kernel
                # (MaxPoolGradWithArgmax is registered for int64 indices only), so the values, and the gradient,
                # come from the plain max-pool, which picks the same maxima.
                _, argmax = argmax_pool(tf.stop_gradient(x))
            skips.append((x, argmax))
            x = pool(x)
        for (unpool, convs), (reference, argmax) in zip(self.decoder, reversed(skips)):
            x = unpool(x, argmax, reference) if self.unpooling == "max" else unpool(x, reference=reference)
            x = self._run_convs(convs, x, training)
        logits = self.classifier(x)[:, :height, :width, :]
        return {"logits": tf.cast(logits, tf.float32)}

    def get_config(self):
        return dict(super().get_config(), unpooling=self.unpooling, widths=list(self.widths),
                    convs_per_stage=list(self.convs_per_stage))
