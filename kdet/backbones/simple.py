"""A small VGG-style backbone for fast CPU work: stages of (3x3 conv + BN + ReLU) x convs_per_stage, then 2x2 max-pool."""
import keras


class SimpleBackbone(keras.layers.Layer):
    """BatchNorm momentum is 0.9 (Keras' default 0.99 leaves the moving statistics behind the batch statistics
    for the few thousand steps a CPU run trains, so inference was worse than training on the same images).

    images [B, H, W, 3] (already normalised) -> {"C1": [B, H/2, W/2, w1], ..., "Cn": [B, H/2^n, W/2^n, wn]}.

    Args:
        widths: channels of each stage; stage i halves the resolution.
        convs_per_stage: 3x3 convolutions before each pool.
    """

    def __init__(self, widths=(16, 32, 64, 128), convs_per_stage=1, **kwargs):
        super().__init__(**kwargs)
        self.widths = tuple(int(w) for w in widths)
        self.convs_per_stage = int(convs_per_stage)
        self.stages = []
        for i, width in enumerate(self.widths):
            layers = []
            for j in range(self.convs_per_stage):
                layers += [keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stage{i + 1}_conv{j + 1}"),
                           keras.layers.BatchNormalization(momentum=0.9, name=f"stage{i + 1}_bn{j + 1}"),
                           keras.layers.ReLU()]
            layers.append(keras.layers.MaxPooling2D(2, name=f"stage{i + 1}_pool"))
            self.stages.append(layers)

    def call(self, x, training=False):
        features = {}
        for i, layers in enumerate(self.stages):
            for layer in layers:
                x = layer(x, training=training) if isinstance(layer, keras.layers.BatchNormalization) else layer(x)
            features[f"C{i + 1}"] = x
        return features

    def get_config(self):
        return dict(super().get_config(), widths=list(self.widths), convs_per_stage=self.convs_per_stage)
