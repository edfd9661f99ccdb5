"""Backbone weights of a two-stage detector, from and to local files (the model itself imports nothing from here).

    load_backbone_weights(model, path)   a `.weights.h5` of the backbone layer (`save_backbone_weights`), or a
                                         torchvision ImageNet classification state dict (`.pth` / `.npz`) of the
                                         same ResNet / VGG-16 (VGG-16's classifier.0 / classifier.3 fill fc6 / fc7
                                         when the box head has their shape, 4096 wide on 7x7x512, as in the paper)
    save_backbone_weights(model, path)   the backbone's variables as a `.weights.h5`
    backbone_table(model)                the torchvision names of a bare resnet<depth> / vgg16(_bn) state dict

`model` is a kdet FasterRCNN (anything with `backbone`, `backbone_name` and, for VGG's fc layers, `box_head`).
"""
import numpy as np
from keras.src.saving import saving_lib

from kdet.convert.torchvision import fc_head_entries, load_state_dict, read_state_dict, resnet_entries, vgg_entries
from kdet.errors import ConfigError

CLASSIFICATION_ONLY = {"resnet": ("fc.",), "vgg16": ("classifier.6.",)}  # the ImageNet class outputs


def _build_backbone(model):
    model.backbone(np.zeros((1, 32, 32, 3), np.float32))  # creates every backbone variable (any size will do)


def kind_of(model):
    return "vgg16" if model.backbone_name == "vgg16" else "resnet"


def _vgg_head_matches(model):
    return (model.representation_size == 4096 and model.roi_output_size == 7 and model.vgg_widths[-1] == 512
            and model.box_head is not None)


def backbone_table(model):
    """The backbone of a kdet FasterRCNN <- a bare torchvision classification network's state dict names."""
    _build_backbone(model)
    if kind_of(model) == "vgg16" and _vgg_head_matches(model) and not model.box_head.built:
        model(np.zeros((1, *model.image_size, 3), np.float32))  # fc6 / fc7 are built by a forward pass
    if model.backbone_name == "vgg16":
        entries = vgg_entries(model.backbone, "features")
        if _vgg_head_matches(model):
            entries += fc_head_entries(model.box_head, "classifier.0", "classifier.3", channels=512)
        return entries
    return resnet_entries(model.backbone, prefix="")


def load_torchvision_backbone(model, source):
    """A torchvision resnet<depth> / vgg16 ImageNet state dict (dict, .pth or .npz) -> the model's backbone (and
    VGG's fc6 / fc7). The ImageNet class outputs (resnet fc.*, vgg16 classifier.6.*) are dropped, and VGG's
    classifier.0 / .3 too when the head cannot take them; any other difference fails like `load_state_dict`, before
    any variable changes. Returns the tensor count."""
    state = read_state_dict(source)
    kind = kind_of(model)
    dropped = CLASSIFICATION_ONLY[kind]
    if kind == "vgg16" and not _vgg_head_matches(model):
        dropped = ("classifier.",)
    state = {name: value for name, value in state.items() if not name.startswith(dropped)}
    return load_state_dict(model, state, table=backbone_table(model))


def load_backbone_weights(model, path):
    """Load a `.weights.h5` of the backbone layer, or a torchvision ResNet / VGG-16 state dict (.pth / .npz)."""
    if str(path).endswith(".weights.h5"):
        _build_backbone(model)
        try:
            saving_lib.load_weights_only(model.backbone, str(path))
        except (ValueError, KeyError, OSError) as error:
            raise ConfigError(f"{path}: cannot load backbone weights: {error}") from None
        return None
    return load_torchvision_backbone(model, path)


def save_backbone_weights(model, path):
    """Write the backbone's variables as a `.weights.h5` that `load_backbone_weights` reads."""
    _build_backbone(model)
    saving_lib.save_weights_only(model.backbone, str(path))
    return str(path)
