"""YOLOv2's passthrough layer: bring the finer 26x26 features to the 13x13 grid by stacking adjacent cells into
channels (26x26x512 -> 13x13x2048, `tf.nn.space_to_depth`) and concatenating them with the coarse features, so the
detector sees fine-grained detail for small objects (YOLO9000 paper, "Fine-Grained Features").

Channel order is TF's space_to_depth: output channel (dy * block + dx) * C + c holds input pixel (block * i + dy,
block * j + dx), channel c. Darknet's `reorg` layer orders them differently; with weights trained here, the order
is only a convention.
"""
import keras
import tensorflow as tf

from kdet.backbones.darknet import DarknetConv


def reorg(features, block_size=2):
    """[B, H, W, C] -> [B, H / block, W / block, C * block^2] (space_to_depth; H and W divisible by block)."""
    return tf.nn.space_to_depth(features, block_size)


@keras.saving.register_keras_serializable(package="kdet")
class Passthrough(keras.layers.Layer):
    """(fine [B, 2H, 2W, C_f], coarse [B, H, W, C_c]) -> [B, H, W, 4 * C' + C_c], reorganised fine first (Darknet's
    `route -1 -4` order).

    Args:
        block_size: 2 for DarkNet-19 (26 -> 13).
        reduce_channels: None = the paper's version (all 512 channels -> 2048); an int adds Darknet's
            yolo-voc.cfg 1x1 conv (64) before the reorg, which cuts the concatenated width from 3072 to 1280.
        batch_norm: for that 1x1 conv.
    """

    def __init__(self, block_size=2, reduce_channels=None, batch_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)
        self.reduce_channels = None if reduce_channels is None else int(reduce_channels)
        self.batch_norm = bool(batch_norm)
        self.reduce = (DarknetConv(self.reduce_channels, 1, batch_norm=self.batch_norm, name="reduce")
                       if self.reduce_channels else None)

    def build(self, input_shapes):
        if self.reduce is not None:
            self.reduce.build(input_shapes[0])

    def call(self, inputs, training=False):
        fine, coarse = inputs
        if self.reduce is not None:
            fine = self.reduce(fine, training=training)
        return tf.concat([reorg(fine, self.block_size), coarse], axis=-1)

    def compute_output_shape(self, input_shapes):
        fine, coarse = input_shapes
        fine_channels = self.reduce_channels or fine[-1]
        return (*coarse[:-1], fine_channels * self.block_size ** 2 + coarse[-1])

    def get_config(self):
        return dict(super().get_config(), block_size=self.block_size, reduce_channels=self.reduce_channels,
                    batch_norm=self.batch_norm)
