"""CenterNet, "Objects as Points" (Zhou, Wang & Krähenbühl 2019): an anchor-free detector with no NMS.

    images [B, H, W, 3] -> trunk (stride 4) -> heads: heatmap [B, H/4, W/4, C] (one peak per object centre),
                                                      size [.., 2] (h, w), offset [.., 2] (sub-cell centre)

Training targets (kdet.ops.heatmap, built in the train step from the padded boxes): a Gaussian per object at its
centre cell floor(p / 4) with CornerNet's radius (min overlap 0.7), the box size and the centre's offset read at that
cell. Loss (kdet.losses.centernet): penalty-reduced focal loss (alpha 2, beta 4) / number of objects + 0.1 L1 size
+ 1 L1 offset at the centres. Decoding (kdet.heads.centernet_head): 3x3 max-pool peaks, top 100 over all classes,
boxes from offset and size, no NMS, TFLite builtins only.

Trunks (`backbone`): "resnet" = ResNet-18/34/50/101 + three (deformable) up-sampling stages (the paper's ResNet-DCN,
kdet.backbones.resnet_deconv); "dla34" = DLA-34 with the DLA-up / IDA-up decoder (kdet.backbones.dla, DCN in the
decoder when `deformable`); "hourglass104" = two stacked hourglasses (kdet.backbones.hourglass). Every trunk follows one interface: trunk(x, training) -> list of stride-4 maps
(Hourglass gives two: the heads are shared, the loss is summed over the maps, predictions come from the last).

Any input size: the normalised image is padded at the bottom / right (zeros = the mean colour) to a multiple of the
trunk's `size_multiple` (32 for ResNet), so pixel coordinates do not move, and the outputs are cut back to
ceil(H / 4) x ceil(W / 4): what the model predicts for an image does not depend on the padding needed.
Input normalisation: ImageNet mean / std on the 0..1 scale.
"""
import keras
import tensorflow as tf

from kdet.backbones.dla import DLA34Trunk
from kdet.backbones.hourglass import Hourglass104Trunk
from kdet.backbones.resnet_deconv import DECONV_FILTERS, ResNetDeconv
from kdet.heads.centernet_head import HEATMAP_PRIOR_BIAS, CenterNetHead, centernet_decode
from kdet.losses.centernet import center_l1_loss, penalty_reduced_focal_loss
from kdet.models.base import Detector
from kdet.ops.heatmap import DEFAULT_MIN_OVERLAP, centernet_targets, output_size
from kdet.ops.images import IMAGENET_MEAN, IMAGENET_STD, image_hw, normalize_imagenet

BACKBONES = ("resnet", "dla34", "hourglass104")
SIZE_MULTIPLE = {"resnet": 32, "dla34": 32, "hourglass104": 32}
HEAD_KEYS = ("heatmap", "size", "offset")


@keras.saving.register_keras_serializable(package="kdet")
class CenterNet(Detector):
    """Args:
        num_classes: C heatmap channels.
        image_size: (H, W) the model is built / exported at (512 x 512 in the paper); it runs at any size.
        max_detections: K peaks kept (100 in the paper).
        backbone: trunk name, one of BACKBONES.
        depth, base_width, deconv_filters, deformable, frozen_stages, frozen_bn: the "resnet" trunk
            (kdet.backbones.resnet_deconv.ResNetDeconv); deformable=True is the paper's ResNet-DCN (and DCN in
            DLA-34's decoder).
        trunk_widths: narrower level widths for "dla34" (channels) / "hourglass104" (dims); None = the paper's.
        head_conv: channels of each head's 3x3 conv (64 for ResNet in the paper).
        heatmap_bias: initial heatmap bias (-2.19).
        min_overlap: CornerNet's IoU for the Gaussian radius (0.7).
        focal_alpha, focal_beta: the penalty-reduced focal loss (2, 4).
        size_weight, offset_weight: lambda_size (0.1) and lambda_off (1).
        score_threshold: peaks at or below it are not reported (0.01; the paper's evaluation keeps all 100).
        image_mean, image_std: normalisation on the 0..1 scale.

    call(images [B, H, W, 3] 0..255) -> {"heatmap": [B, h, w, C] logits, "size": [B, h, w, 2] (h, w) in output
    cells, "offset": [B, h, w, 2] (y, x)}, h, w = ceil(H / 4), ceil(W / 4); for trunks with S > 1 maps also
    "heatmap_s", "size_s", "offset_s" for the intermediate maps s = 0 .. S - 2.
    """

    stride = 4
    loss_names = ("heatmap_loss", "size_loss", "offset_loss")

    def __init__(self, num_classes, image_size=(512, 512), max_detections=100, backbone="resnet", depth=18,
                 base_width=64, deconv_filters=DECONV_FILTERS, deformable=True, frozen_stages=0, frozen_bn=False,
                 trunk_widths=None,
                 head_conv=64, heatmap_bias=HEATMAP_PRIOR_BIAS, min_overlap=DEFAULT_MIN_OVERLAP, focal_alpha=2.0,
                 focal_beta=4.0, size_weight=0.1, offset_weight=1.0, score_threshold=0.01,
                 image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, **kwargs):
        super().__init__(num_classes=num_classes, image_size=image_size, max_detections=max_detections, **kwargs)
        if backbone not in BACKBONES:
            raise ValueError(f"CenterNet backbone must be one of {BACKBONES}, got {backbone!r}")
        self.backbone_name = backbone
        self.depth, self.base_width = int(depth), int(base_width)
        self.deconv_filters = tuple(int(f) for f in deconv_filters)
        self.deformable = bool(deformable)
        self.trunk_widths = None if trunk_widths is None else tuple(int(w) for w in trunk_widths)
        self.frozen_stages, self.frozen_bn = int(frozen_stages), bool(frozen_bn)
        self.head_conv, self.heatmap_bias = int(head_conv), float(heatmap_bias)
        self.min_overlap = float(min_overlap)
        self.focal_alpha, self.focal_beta = float(focal_alpha), float(focal_beta)
        self.size_weight, self.offset_weight = float(size_weight), float(offset_weight)
        self.score_threshold = float(score_threshold)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.size_multiple = SIZE_MULTIPLE[backbone]
        self.trunk = self._make_trunk()
        self.head = CenterNetHead(self.num_classes, self.head_conv, self.heatmap_bias, name="head")

    def _make_trunk(self):
        """The trunk named by `backbone` (one branch per entry of BACKBONES)."""
        if self.backbone_name == "resnet":
            return ResNetDeconv(self.depth, self.base_width, self.deconv_filters, self.deformable,
                                self.frozen_stages, self.frozen_bn, name="trunk")
        if self.backbone_name == "dla34":  # trunk_widths: the six level channels (16, 32, 64, 128, 256, 512)
            widths = {} if self.trunk_widths is None else {"channels": self.trunk_widths}
            return DLA34Trunk(deformable=self.deformable, name="trunk", **widths)
        if self.backbone_name == "hourglass104":  # trunk_widths: the six level dims (256, 256, 384, 384, 384, 512)
            widths = {} if self.trunk_widths is None else {"dims": self.trunk_widths}
            return Hourglass104Trunk(name="trunk", **widths)
        raise ValueError(f"no trunk for backbone {self.backbone_name!r}")

    def normalize(self, images):
        return normalize_imagenet(images, self.compute_dtype, self.image_mean, self.image_std)

    def _pad(self, x):
        """[B, H, W, 3] normalised -> bottom / right zero-padded to multiples of `size_multiple` (no-op when the
        static size already is one)."""
        height, width = image_hw(x)
        multiple = self.size_multiple
        if isinstance(height, int) and isinstance(width, int) and not height % multiple and not width % multiple:
            return x
        return tf.pad(x, [[0, 0], [0, (-height) % multiple], [0, (-width) % multiple], [0, 0]])

    def call(self, images, training=False):
        grid_h, grid_w = output_size(image_hw(images), self.stride)
        maps = self.trunk(self._pad(self.normalize(images)), training=training)
        outputs = {}
        for s, feature in enumerate(maps):
            heads = self.head(feature)  # on the padded map, then cut: the head's 3x3 convs see what they saw
            suffix = "" if s == len(maps) - 1 else f"_{s}"
            outputs.update({f"{key}{suffix}": tf.cast(heads[key][:, :grid_h, :grid_w, :], tf.float32)
                            for key in HEAD_KEYS})
        return outputs

    def heatmaps(self, images):
        """images [B, H, W, 3] 0..255 -> per-class centre probabilities [B, ceil(H / 4), ceil(W / 4), C] of the
        last map (sigmoid of the heatmap logits); cell (i, j) covers input pixels [4i, 4i + 4) x [4j, 4j + 4).
        What `kdet predict --heatmap` draws."""
        return tf.sigmoid(self(images, training=False)["heatmap"])

    def encode_targets(self, targets, image_size):
        """{"boxes": [B, M, 4] yxyx pixels, "labels": [B, M] (-1 padding)} -> kdet.ops.heatmap.centernet_targets:
        {"heatmap": [B, h, w, C], "indices": [B, M], "sizes": [B, M, 2], "offsets": [B, M, 2], "mask": [B, M]}."""
        return centernet_targets(targets["boxes"], targets["labels"], image_size, self.num_classes, self.stride,
                                 self.min_overlap)

    def loss_from_targets(self, y, y_pred, images=None, training=True):
        """Focal + 0.1 size + 1 offset, summed over the trunk's maps (one for ResNet)."""
        suffixes = sorted({key[len("heatmap"):] for key in y_pred if key.startswith("heatmap")})
        heatmap = size = offset = 0.0
        for suffix in suffixes:
            heatmap += penalty_reduced_focal_loss(y["heatmap"], y_pred[f"heatmap{suffix}"], self.focal_alpha,
                                                  self.focal_beta)
            size += center_l1_loss(y_pred[f"size{suffix}"], y["indices"], y["sizes"], y["mask"])
            offset += center_l1_loss(y_pred[f"offset{suffix}"], y["indices"], y["offsets"], y["mask"])
        self.track_loss("heatmap_loss", heatmap)
        self.track_loss("size_loss", size)
        self.track_loss("offset_loss", offset)
        return heatmap + self.size_weight * size + self.offset_weight * offset

    def decode(self, outputs, image_size):
        """Peaks of the last map's heatmap -> detection dict, boxes yxyx in the pixels of the input of
        `image_size` (H, W)."""
        return centernet_decode(outputs["heatmap"], outputs["size"], outputs["offset"], image_size, self.stride,
                                self.max_detections, self.score_threshold)

    def get_config(self):
        config = super().get_config()
        config.update(backbone=self.backbone_name, depth=self.depth, base_width=self.base_width,
                      deconv_filters=list(self.deconv_filters), deformable=self.deformable,
                      trunk_widths=None if self.trunk_widths is None else list(self.trunk_widths),
                      frozen_stages=self.frozen_stages, frozen_bn=self.frozen_bn, head_conv=self.head_conv,
                      heatmap_bias=self.heatmap_bias, min_overlap=self.min_overlap, focal_alpha=self.focal_alpha,
                      focal_beta=self.focal_beta, size_weight=self.size_weight, offset_weight=self.offset_weight,
                      score_threshold=self.score_threshold, image_mean=list(self.image_mean),
                      image_std=list(self.image_std))
        return config
