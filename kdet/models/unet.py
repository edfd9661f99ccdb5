"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): a contracting and an expanding path joined by copy-and-crop.

Contracting: per level two 3x3 convolutions + ReLU, then 2x2 max-pool (channels double per level, 64 -> 1024).
Expanding: 2x2 up-convolution halving the channels, concatenation with the cropped feature map of the same level,
two 3x3 convolutions + ReLU; a 1x1 convolution scores the classes. Dropout ends the contracting path.

    padding="valid"  the paper's network: unpadded convolutions, the output is smaller than the input
                     (572 x 572 -> 388 x 388); skips are centre-cropped ("copy and crop").
    padding="same"   the common variant: padded convolutions, output = input (sizes rounded up to 2^depth).

Sizes: a same-padding U-Net runs at any input size (the image is mirrored at the bottom / right up to a multiple of
2^depth and the logits cut back), logits at the input's size. A valid U-Net keeps the paper's fixed geometry: it takes
images of exactly `image_size` (the output tile) and runs on `network_input_size`, the image mirrored outward by
`context_margin` pixels (92 for the paper's net), the paper's extrapolation of the missing context, plus what rounds
the output up to a size the net produces; another input size is a clear error. `predict_tiled` (segmentation_base)
does the paper's overlap-tile strategy for larger images: each tile's margin then holds real neighbouring pixels,
and mirroring only happens at the image border.

Training loss: pixel cross-entropy weighted by the border weight map w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2)
(kdet.losses.unet_weights), computed in the train step (in graph) from the instance masks, w0 = 10, sigma = 5 px.
With border_weights the model declares DataNeeds(instance_masks=True) and fits on
y = {"segmentation_masks": [B, H, W, 1], "masks": [B, N, H, W]}; a plain mask y is refused with a message saying so
(set border_weights=False to train unweighted on plain masks).
"""
import keras
import tensorflow as tf

from kdet.errors import ConfigError
from kdet.losses.unet_weights import border_weight_map, instance_label_image
from kdet.models.base import DataNeeds
from kdet.models.segmentation_base import SemanticSegmenter
from kdet.ops.images import image_hw

UNET_WIDTHS = (64, 128, 256, 512, 1024)


def valid_sizes(output_size, depth, convs=2):
    """(input, output) of a valid U-Net of `depth` pools for the smallest output >= output_size.

    Every 3x3 valid convolution removes 2 pixels, every pool halves (and needs an even size), every up-convolution
    doubles. 388 with depth 4 -> (572, 388).
    """
    bottom = 1
    while True:
        size = bottom
        for _ in range(depth):
            size = 2 * size - 2 * convs
        if size >= output_size:
            break
        bottom += 1
    input_size = bottom + 2 * convs
    for _ in range(depth):
        input_size = 2 * input_size + 2 * convs
    return input_size, size


def _centre_crop(x, height, width):
    """[B, h, w, C] -> the centred [B, height, width, C] (U-Net's crop of the skip; the size difference is even)."""
    top = (x.shape[1] - height) // 2
    left = (x.shape[2] - width) // 2
    return x[:, top:top + height, left:left + width, :]


@keras.saving.register_keras_serializable(package="kdet")
class UNet(SemanticSegmenter):
    """Args:
        num_classes: foreground classes (the model predicts num_classes + 1, 0 = background).
        image_size: (H, W) of the images (= of the logits); the paper's 388 x 388 output tile runs on 572 x 572.
            A valid U-Net takes only this size; a same-padding one takes any size.
        widths: channels per level, the last one is the bottom (paper: 64, 128, 256, 512, 1024 -> 4 pools).
        padding: "valid" (paper) or "same".
        batch_norm: conv + BN + ReLU (not in the paper; helps short CPU runs).
        dropout: at the end of the contracting path (paper: yes, rate unstated; 0.5 here).
        border_weights: train with the border weight map (fit targets must then carry the instance masks).
        w0, sigma: the weight map's border weight and width in pixels (paper: 10, 5).
        class_weights, ignore_index: see SemanticSegmenter; with border weights, class_weights give w_c.

    call(images [B, H, W, 3]) -> {"logits": [B, H, W, num_classes + 1]}.
    """

    def __init__(self, num_classes, image_size=(388, 388), max_detections=100, widths=UNET_WIDTHS, padding="valid",
                 batch_norm=False, dropout=0.5, border_weights=True, w0=10.0, sigma=5.0, class_weights=None,
                 ignore_index=255, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections,
                         class_weights=class_weights, ignore_index=ignore_index, **kwargs)
        if padding not in ("valid", "same"):
            raise ConfigError(f"U-Net padding {padding!r}; choose 'valid' (paper) or 'same'")
        if len(widths) < 2:
            raise ConfigError(f"U-Net needs at least two levels, widths = {list(widths)}")
        self.widths = tuple(int(w) for w in widths)
        self.padding = padding
        self.batch_norm = bool(batch_norm)
        self.dropout = float(dropout)
        self.border_weights = bool(border_weights)
        self.w0 = float(w0)
        self.sigma = float(sigma)
        depth = len(self.widths) - 1
        if padding == "valid":
            sizes = [valid_sizes(s, depth) for s in self.image_size]
            self.network_input_size = tuple(s[0] for s in sizes)
            self.network_output_size = tuple(s[1] for s in sizes)
            self.context_margin = (self.network_input_size[0] - self.network_output_size[0]) // 2
        else:
            multiple = 2 ** depth
            self.network_input_size = tuple(-(-s // multiple) * multiple for s in self.image_size)
            self.network_output_size = self.network_input_size
            self.context_margin = 0
        for size, padded in zip(self.image_size, self.network_input_size):
            if padded - size - self.context_margin >= size:  # tf.pad REFLECT needs pads < the image size
                raise ConfigError(f"image_size {list(self.image_size)} is too small for a {padding} U-Net of depth "
                                  f"{depth}: it must be larger than {padded - size - self.context_margin} px")
        self.down_blocks = [self._block(w, f"down{i}") for i, w in enumerate(self.widths[:-1], start=1)]
        self.pool = keras.layers.MaxPooling2D(2, name="pool")
        self.bottom = self._block(self.widths[-1], "bottom")
        self.bottom_dropout = keras.layers.Dropout(self.dropout, name="bottom_dropout")
        self.up_convs, self.up_blocks = [], []
        for i in range(depth, 0, -1):
            width = self.widths[i - 1]
            self.up_convs.append(keras.layers.Conv2DTranspose(width, 2, strides=2, name=f"upconv{i}"))
            self.up_blocks.append(self._block(width, f"up{i}"))
        self.classifier = keras.layers.Conv2D(self.num_mask_classes, 1, name="classifier")

    def _block(self, width, name):
        layers = []
        for j in (1, 2):
            layers.append(keras.layers.Conv2D(width, 3, padding=self.padding, use_bias=not self.batch_norm,
                                              name=f"{name}_conv{j}"))
            layers.append(keras.layers.BatchNormalization(name=f"{name}_bn{j}") if self.batch_norm else None)
        return layers

    @staticmethod
    def _run_block(block, x, training):
        for conv, norm in zip(block[::2], block[1::2]):
            x = conv(x)
            x = tf.nn.relu(norm(x, training=training) if norm is not None else x)
        return x

    def network(self, x, training=False):
        """The U-Net itself: normalised [B, in_h, in_w, 3] (network_input_size) -> logits [B, out_h, out_w, C]."""
        skips = []
        for block in self.down_blocks:
            x = self._run_block(block, x, training)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom_dropout(self._run_block(self.bottom, x, training), training=training)
        for up_conv, block, skip in zip(self.up_convs, self.up_blocks, reversed(skips)):
            x = up_conv(x)
            if self.padding == "valid":  # same padding: the skip already has x's size (any, also unknown, size)
                skip = _centre_crop(skip, x.shape[1], x.shape[2])
            x = tf.concat([skip, x], axis=-1)
            x = self._run_block(block, x, training)
        return self.classifier(x)

    @property
    def data_needs(self):
        return DataNeeds(semantic=True, instance_masks=self.border_weights, adapt=isinstance(self.class_weights, str))

    def call(self, images, training=False):
        if self.padding == "same":
            height, width = image_hw(images)
            multiple = 2 ** (len(self.widths) - 1)
            pad = [(-height) % multiple, (-width) % multiple]
            if all(isinstance(p, int) for p in (height, width)) and (pad[0] >= height or pad[1] >= width):
                raise ValueError(f"a same-padding U-Net of depth {len(self.widths) - 1} mirrors images up to a "
                                 f"multiple of {multiple}; {height}x{width} is too small for that")
            x = tf.pad(self.normalize(images), [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]], mode="REFLECT")
            return {"logits": tf.cast(self.network(x, training=training)[:, :height, :width, :], tf.float32)}
        height, width = self.image_size
        x = self.normalize(self._at_image_size(images))
        margin = self.context_margin
        pad_after = [self.network_input_size[0] - height - margin, self.network_input_size[1] - width - margin]
        x = tf.pad(x, [[0, 0], [margin, pad_after[0]], [margin, pad_after[1]], [0, 0]], mode="REFLECT")
        logits = self.network(x, training=training)[:, :height, :width, :]
        return {"logits": tf.cast(logits, tf.float32)}

    def _at_image_size(self, images):
        """A valid U-Net's input, checked to be image_size and given that static shape (its crops need it)."""
        height, width = self.image_size
        message = (f"a valid-padding U-Net keeps the paper's fixed geometry: it takes {height}x{width} images (built "
                   f"with image_size={[height, width]}, network input {self.network_input_size[0]}x"
                   f"{self.network_input_size[1]} with {self.context_margin} px of mirrored context); build it for "
                   "this size, use padding='same' for any size, or predict_tiled for larger images")
        static = tuple(images.shape[1:3])
        if None not in static:
            if static != (height, width):
                raise ValueError(f"{message}; got {static[0]}x{static[1]}")
            return images
        check = tf.debugging.assert_equal(tf.shape(images)[1:3], tf.constant([height, width]), message=message)
        with tf.control_dependencies([check]):
            return tf.reshape(images, [-1, height, width, images.shape[-1] or 3])

    def logits_from_context(self, windows):
        """windows [B, H + 2m, W + 2m, 3] with real context (m = context_margin) -> logits [B, H, W, C]."""
        height, width = self.image_size
        x = self.normalize(windows)
        extra = [self.network_input_size[0] - x.shape[1], self.network_input_size[1] - x.shape[2]]
        x = tf.pad(x, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]], mode="REFLECT")
        return tf.cast(self.network(x)[:, :height, :width, :], tf.float32)

    def standardize_targets(self, y, image_size):
        """With border weights y must carry the instance masks: {"segmentation_masks": [B, H, W(, 1)],
        "masks": [B, N, H, W]} (0/1, zero rows = padding)."""
        targets = super().standardize_targets(y, image_size)
        if self.border_weights and "masks" not in targets and "weights" not in targets:
            raise ValueError("UNet(border_weights=True) trains on y = {'segmentation_masks': [B, H, W, 1] class ids, "
                             "'masks': [B, N, H, W] instance masks} (its weight map needs the instances; kdet's "
                             "pipeline gives both with with_masks=True); got semantic masks only. Pass the instance "
                             "masks or build the model with border_weights=False")
        return targets

    def encode_targets(self, targets, image_size):
        """{"labels": [B, H, W]} (+ "weights": [B, H, W] border weight map from targets["masks"] [B, N, H, W])."""
        encoded = super().encode_targets(targets, image_size)
        if "weights" in targets:  # made ahead of the step by pipeline_targets
            encoded["weights"] = targets["weights"]
        elif self.border_weights:
            encoded["weights"] = self._weight_map(targets["masks"], encoded["labels"], self.class_weight_vector)
        return encoded

    def _weight_map(self, masks, labels, class_weights):
        return border_weight_map(instance_label_image(masks), labels, class_weights, w0=self.w0, sigma=self.sigma)

    def pipeline_targets(self, y, images):
        """The border weight map made in tf.data (the same numbers the train step would compute, ahead of it, so
        the ~1 s per batch of distance transforms overlaps the previous step): y with "weights" instead of
        "masks". Class weights must be final (adapt runs before the pipeline is built)."""
        if not (self.border_weights and isinstance(y, dict) and "masks" in y):
            return y
        labels = self.standardize_targets(y, None)["segmentation_masks"]
        # The class weights as they are now (a constant in the dataset's graph, not the model's variable).
        class_weights = None if self.class_weight_vector is None else \
            tf.constant(keras.ops.convert_to_numpy(self.class_weight_vector))
        return {"segmentation_masks": y["segmentation_masks"],
                "weights": self._weight_map(y["masks"], labels, class_weights)}

    def get_config(self):
        return dict(super().get_config(), widths=list(self.widths), padding=self.padding, batch_norm=self.batch_norm,
                    dropout=self.dropout, border_weights=self.border_weights, w0=self.w0, sigma=self.sigma)
