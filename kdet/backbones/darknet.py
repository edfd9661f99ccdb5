"""Darknet backbones of YOLOv1 / Fast YOLO / YOLOv2 / tiny-YOLOv2, written as the layer lists of Darknet's cfg files.

Each layout is a list of steps: ("conv", filters, kernel, stride), ("pool", size, stride) or ("mark", name). A conv
is Conv2D + (BatchNorm) + leaky ReLU 0.1 (every Darknet conv but the last, linear, prediction layer); "mark" saves
the current feature map under `name` in the output dict.

  yolo_v1      the YOLOv1 paper's 24 conv layers (Fig. 3): 448 -> 7x7x1024, stride 64.
  fast_yolo    Fast YOLO's 9 conv layers (Darknet's original yolo-tiny.cfg): 16..512 each followed by a 2x2
               max-pool, then three 1024 convs; 448 -> 7x7x1024, stride 64.
  darknet19    YOLOv2's DarkNet-19 without its 1000-way classifier conv: 18 conv + 5 max-pool (the 19th conv is the
               classifier, replaced by the detection layers); "C4" = 26x26x512 (the passthrough source, before
               the last pool) and "C5" = 13x13x1024 at 416.
  tiny_darknet tiny-YOLOv2 (tiny-yolo-voc.cfg): 16..512 with five 2x2/2 pools and a 2x2/1 pool, then a 1024 conv;
               416 -> 13x13x1024, stride 32.

`width_multiplier` scales every conv's filters (kept >= 8), so tests and CPU benchmarks can run thin versions of
the same topology. TF `padding="same"` pads stride-2 convs bottom/right where Darknet pads both sides; nothing here
imports Darknet weights, so that does not matter.
"""
import keras

# BatchNorm moving-average momentum. Darknet (and Keras) use 0.99, right for 10^5-step schedules; on a CPU budget of a
# few hundred steps the moving statistics still weigh their initial (0, 1) by 0.99^300 = 5 % and more, and measured
# here a 24-layer YOLOv1 that fits a batch in training mode predicts near-constants in inference mode. At 0.9 they
# settle within ~50 steps.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5  # Darknet's (Keras' default is 1e-3)

LAYOUTS = {
    "yolo_v1": [
        ("conv", 64, 7, 2), ("pool", 2, 2),
        ("conv", 192, 3, 1), ("pool", 2, 2),
        ("conv", 128, 1, 1), ("conv", 256, 3, 1), ("conv", 256, 1, 1), ("conv", 512, 3, 1), ("pool", 2, 2),
        *[("conv", 256, 1, 1), ("conv", 512, 3, 1)] * 4, ("conv", 512, 1, 1), ("conv", 1024, 3, 1), ("pool", 2, 2),
        *[("conv", 512, 1, 1), ("conv", 1024, 3, 1)] * 2, ("conv", 1024, 3, 1), ("conv", 1024, 3, 2),
        ("conv", 1024, 3, 1), ("conv", 1024, 3, 1), ("mark", "C5"),
    ],
    "fast_yolo": [
        *[step for filters in (16, 32, 64, 128, 256, 512) for step in (("conv", filters, 3, 1), ("pool", 2, 2))],
        ("conv", 1024, 3, 1), ("conv", 1024, 3, 1), ("conv", 1024, 3, 1), ("mark", "C5"),
    ],
    "darknet19": [
        ("conv", 32, 3, 1), ("pool", 2, 2),
        ("conv", 64, 3, 1), ("pool", 2, 2),
        ("conv", 128, 3, 1), ("conv", 64, 1, 1), ("conv", 128, 3, 1), ("pool", 2, 2),
        ("conv", 256, 3, 1), ("conv", 128, 1, 1), ("conv", 256, 3, 1), ("pool", 2, 2),
        ("conv", 512, 3, 1), ("conv", 256, 1, 1), ("conv", 512, 3, 1), ("conv", 256, 1, 1), ("conv", 512, 3, 1),
        ("mark", "C4"), ("pool", 2, 2),
        ("conv", 1024, 3, 1), ("conv", 512, 1, 1), ("conv", 1024, 3, 1), ("conv", 512, 1, 1), ("conv", 1024, 3, 1),
        ("mark", "C5"),
    ],
    "tiny_darknet": [
        *[step for filters in (16, 32, 64, 128, 256) for step in (("conv", filters, 3, 1), ("pool", 2, 2))],
        ("conv", 512, 3, 1), ("pool", 2, 1), ("conv", 1024, 3, 1), ("mark", "C5"),
    ],
}
STRIDES = {"yolo_v1": 64, "fast_yolo": 64, "darknet19": 32, "tiny_darknet": 32}


def scaled(filters, width_multiplier):
    """Filters of a thinned layer: round(filters * multiplier), at least 8."""
    return max(8, int(round(filters * width_multiplier)))


@keras.saving.register_keras_serializable(package="kdet")
class DarknetConv(keras.layers.Layer):
    """Darknet's [convolutional] block: conv (no bias when batch-normalised) -> BatchNorm -> leaky ReLU 0.1.

    x: [B, H, W, C_in] -> [B, H / stride, W / stride, filters].
    """

    def __init__(self, filters, kernel_size=3, strides=1, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.batch_norm = bool(batch_norm)
        self.conv = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides, padding="same",
                                        use_bias=not self.batch_norm, name="conv")
        self.bn = (keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name="bn")
                   if self.batch_norm else None)
        self.act = keras.layers.LeakyReLU(negative_slope=0.1)

    def build(self, input_shape):
        self.conv.build(input_shape)
        if self.bn is not None:
            self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=False):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return self.act(x)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return dict(super().get_config(), filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                    batch_norm=self.batch_norm)


@keras.saving.register_keras_serializable(package="kdet")
class DarknetBackbone(keras.layers.Layer):
    """images [B, H, W, 3] (normalised) -> {mark name: feature map} for one of `LAYOUTS`.

    Args:
        layout: "yolo_v1", "fast_yolo", "darknet19" or "tiny_darknet".
        width_multiplier: scales every conv's filters (1.0 = the paper's network).
        batch_norm: BatchNorm after every conv (YOLOv2 and Darknet's cfgs: yes; the 2016 YOLOv1 paper: no).
    Output (at 416 / 448 input): darknet19 {"C4": [B, 26, 26, 512w], "C5": [B, 13, 13, 1024w]};
    tiny_darknet {"C5": [B, 13, 13, 1024w]}; yolo_v1 / fast_yolo {"C5": [B, 7, 7, 1024w]}.
    """

    def __init__(self, layout="darknet19", width_multiplier=1.0, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown Darknet layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        self.layout, self.width_multiplier, self.batch_norm = layout, float(width_multiplier), bool(batch_norm)
        self.steps = []
        conv_index = 0
        for step in LAYOUTS[layout]:
            if step[0] == "conv":
                conv_index += 1
                _, filters, kernel, stride = step
                self.steps.append(DarknetConv(scaled(filters, self.width_multiplier), kernel, stride,
                                              batch_norm=self.batch_norm, name=f"conv{conv_index}"))
            elif step[0] == "pool":
                self.steps.append(keras.layers.MaxPooling2D(step[1], strides=step[2], padding="same"))
            else:
                self.steps.append(step[1])
        self.num_convs = conv_index
        self.stride = STRIDES[layout]

    def output_channels(self, name="C5"):
        """Channels of the feature map saved under `name`."""
        channels = None
        for step in LAYOUTS[self.layout]:
            if step[0] == "conv":
                channels = scaled(step[1], self.width_multiplier)
            elif step[0] == "mark" and step[1] == name:
                return channels
        raise KeyError(name)

    def build(self, input_shape):
        shape = tuple(input_shape)
        for step in self.steps:
            if not isinstance(step, str):
                step.build(shape)
                shape = step.compute_output_shape(shape)

    def call(self, x, training=False):
        features = {}
        for step in self.steps:
            if isinstance(step, str):
                features[step] = x
            elif isinstance(step, DarknetConv):
                x = step(x, training=training)
            else:
                x = step(x)
        return features

    def get_config(self):
        return dict(super().get_config(), layout=self.layout, width_multiplier=self.width_multiplier,
                    batch_norm=self.batch_norm)
