"""torchvision -> kdet tables for Faster R-CNN, built from the pieces of `kdet.convert.torchvision`.

    faster_rcnn_table(model)        torchvision fasterrcnn_resnet50_fpn (v1) names: backbone.body.*, backbone.fpn.*,
                                    rpn.head.*, roi_heads.box_head.fc6/fc7, roi_heads.box_predictor.*
    backbone_table(model, prefix)   a bare torchvision resnet<depth> or vgg16 classification state dict (ImageNet
                                    weights a user has locally); VGG-16's classifier.0 / classifier.3 fill fc6 / fc7
                                    when the head has their shape (4096 wide on 7x7x512), as in the paper

Two layout changes beyond the shared ones: torchvision flattens pooled RoI features as (c, h, w) and kdet as
(h, w, c), so fc6's input rows are reordered (`ChannelsFirstFlattenEntry`); box deltas are (dx, dy, dw, dh) per
anchor or class in torchvision and (dy, dx, dh, dw) in kdet (`box_delta_permutation`).
"""
import dataclasses

import numpy as np

from kdet.convert.torchvision import (Entry, box_delta_permutation, conv_entries, fpn_entries, join, load_state_dict,
                                      read_state_dict, resnet_entries)
from kdet.errors import ConfigError

VGG16_CONV_INDICES = ((0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))  # torchvision vgg16 `features.<i>`
CLASSIFICATION_ONLY = {"resnet": ("fc.",), "vgg16": ("classifier.6.",)}           # ImageNet class outputs


@dataclasses.dataclass
class ChannelsFirstFlattenEntry(Entry):
    """A Dense kernel fed by flattened [h, w, C] features, from a torch Linear fed by flattened [C, h, w] ones."""

    channels: int = 1

    def to_keras(self, array):
        array = np.asarray(array, np.float32)  # (out, C * h * w)
        out, flat = array.shape
        side = int(round((flat // self.channels) ** 0.5))
        return array.reshape(out, self.channels, side, side).transpose(2, 3, 1, 0).reshape(flat, out)


def dense_entries(prefix, layer, permutation=None):
    """A Dense layer <- a torch Linear (`<prefix>.weight` (out, in), `<prefix>.bias`)."""
    return conv_entries(prefix, layer, permutation, kind="linear")


def vgg16_entries(vgg, prefix="features"):
    """kdet.backbones.vgg.VGGBackbone (13 convs, no BN) <- torchvision vgg16 `features.<i>`."""
    entries = []
    for (convs, _), indices in zip(vgg.stages, VGG16_CONV_INDICES):
        if len(convs) != len(indices) or convs[0][1] is not None:
            raise ConfigError("torchvision VGG-16 weights need the 2-2-3-3-3 VGG backbone without batch norm")
        for (conv, _), index in zip(convs, indices):
            entries += conv_entries(join(prefix, str(index)), conv)
    return entries


def fc_head_entries(head, prefix, channels):
    """TwoFCHead <- fc6 / fc7 Linear layers named `<prefix_fc6>` / `<prefix_fc7>`; prefix is a pair of names."""
    fc6_name, fc7_name = prefix
    return ([ChannelsFirstFlattenEntry(f"{fc6_name}.weight", head.fc6.kernel, "linear", channels=channels),
             Entry(f"{fc6_name}.bias", head.fc6.bias)] + dense_entries(fc7_name, head.fc7))


def backbone_table(model, prefix=""):
    """The backbone of a kdet FasterRCNN <- a bare torchvision classification network's state dict."""
    if model.backbone_name == "vgg16":
        entries = vgg16_entries(model.backbone, join(prefix, "features"))
        if _vgg_head_matches(model):
            entries += fc_head_entries(model.box_head, (join(prefix, "classifier.0"), join(prefix, "classifier.3")),
                                       channels=512)
        return entries
    return resnet_entries(model.backbone, prefix)


def _vgg_head_matches(model):
    return (model.representation_size == 4096 and model.roi_output_size == 7 and model.vgg_widths[-1] == 512
            and model.box_head is not None)


def faster_rcnn_table(model):
    """kdet FasterRCNN(backbone="resnet_fpn") <- torchvision fasterrcnn_resnet50_fpn (and its ResNet-18/34/101
    variants built alike)."""
    if model.backbone_name != "resnet_fpn":
        raise ConfigError(f"torchvision's Faster R-CNN layout needs backbone='resnet_fpn', got {model.backbone_name!r}")
    head = model.rpn_head
    entries = resnet_entries(model.backbone, "backbone.body") + fpn_entries(model.fpn, "backbone.fpn")
    for i, conv in enumerate(head.convs):
        entries += conv_entries(f"rpn.head.conv.{i}.0", conv)
    entries += conv_entries("rpn.head.cls_logits", head.cls_logits)
    entries += conv_entries("rpn.head.bbox_pred", head.bbox_pred, box_delta_permutation(head.num_anchors))
    entries += fc_head_entries(model.box_head, ("roi_heads.box_head.fc6", "roi_heads.box_head.fc7"),
                               channels=model.fpn_channels)
    predictor = model.box_predictor
    entries += dense_entries("roi_heads.box_predictor.cls_score", predictor.cls_score)
    entries += dense_entries("roi_heads.box_predictor.bbox_pred", predictor.bbox_pred,
                             box_delta_permutation(predictor.num_classes + 1))
    return entries


def load_faster_rcnn_state_dict(model, state_dict):
    """torchvision fasterrcnn_resnet50_fpn state dict ({name: array}, .pth or .npz) -> kdet FasterRCNN; all or
    nothing (a KdetError lists missing / unexpected names and shape mismatches). Returns the tensor count."""
    return load_state_dict(model, state_dict, table=faster_rcnn_table)


def load_torchvision_backbone(model, source):
    """A torchvision resnet<depth> / vgg16 ImageNet state dict -> the model's backbone (and VGG's fc6 / fc7).

    The ImageNet class outputs (resnet fc.*, vgg16 classifier.6.*) are dropped, and VGG's classifier.0 / .3 too when
    the head cannot take them; any other difference fails like `load_state_dict`.
    """
    state = read_state_dict(source)
    kind = "vgg16" if model.backbone_name == "vgg16" else "resnet"
    dropped = CLASSIFICATION_ONLY[kind]
    if kind == "vgg16" and not _vgg_head_matches(model):
        dropped = ("classifier.",)
    state = {name: value for name, value in state.items() if not name.startswith(dropped)}
    return load_state_dict(model, state, table=lambda m: backbone_table(m, prefix=""))
