"""torchvision state dict -> kdet model, through one table per architecture: the one home of kdet's converter tables.

A table is a list of `Entry(torch_name, variable, kind, permutation)`: which torchvision tensor fills which Keras
variable, and how its layout changes:
  * "conv": OIHW -> HWIO;  "depthwise": (C, 1, kh, kw) -> (kh, kw, C, 1);  "linear": (out, in) -> (in, out);
  * "vector": as is (biases, BatchNorm weight / bias / running_mean / running_var, scales);
  * permutation: an optional reordering of the output channels (dimension 0 in torch), e.g. torchvision's box
    deltas (dx, dy, dw, dh) per anchor -> kdet's (dy, dx, dh, dw);
  * `ChannelsFirstFlattenEntry`: a Dense fed by flattened (h, w, c) features from a torch Linear fed by (c, h, w)
    ones (the fc6 of Faster R-CNN's box head).
Tables are built from small pieces (`conv_entries`, `batch_norm_entries`, `resnet_entries`, `fpn_entries`,
`vgg_entries`, ...), and each architecture's builder is in the plain dict `TABLES` (model class name -> builder):
RetinaNet (retinanet_resnet50_fpn), SSD (ssd300_vgg16), FasterRCNN (fasterrcnn_resnet50_fpn v1). A part of a model
composes its table from the same pieces and passes it as `load_state_dict(model, state, table=...)`
(`kdet.convert.backbone_weights` does so for ImageNet backbones).

`load_state_dict` refuses a state dict that does not fit exactly: it lists the torch names the table expects but
the state lacks (missing), the names the state has but the table does not use (unexpected; BatchNorm's
num_batches_tracked is never needed) and shape mismatches, before changing any variable.
"""
import dataclasses
import zlib
from pathlib import Path

import numpy as np

from kdet.convert.pth import read_pth
from kdet.errors import ConfigError, KdetError

IGNORED_SUFFIXES = (".num_batches_tracked",)
KINDS = ("conv", "depthwise", "linear", "vector")


@dataclasses.dataclass
class Entry:
    torch_name: str
    variable: object          # a keras.Variable
    kind: str = "vector"      # one of KINDS
    permutation: tuple = None  # reorders torch dimension 0 (output channels) before the layout change

    def to_keras(self, array):
        array = np.asarray(array, np.float32)
        if self.permutation is not None:
            array = array[list(self.permutation)]
        if self.kind == "conv":
            return array.transpose(2, 3, 1, 0)
        if self.kind == "depthwise":
            return array.transpose(2, 3, 0, 1)
        if self.kind == "linear":
            return array.T
        return array

    def torch_shape(self):
        shape = tuple(self.variable.shape)
        if self.kind == "conv":
            return (shape[3], shape[2], shape[0], shape[1])
        if self.kind == "depthwise":
            return (shape[2], shape[3], shape[0], shape[1])
        if self.kind == "linear":
            return (shape[1], shape[0])
        return shape


@dataclasses.dataclass
class ChannelsFirstFlattenEntry(Entry):
    """A Dense kernel fed by flattened [h, w, C] features, from a torch Linear fed by flattened [C, h, w] ones."""

    channels: int = 1

    def to_keras(self, array):
        array = np.asarray(array, np.float32)  # (out, C * h * w)
        out, flat = array.shape
        side = int(round((flat // self.channels) ** 0.5))
        return array.reshape(out, self.channels, side, side).transpose(2, 3, 1, 0).reshape(flat, out)


# -- table pieces ---------------------------------------------------------------------------------------------------
def conv_entries(prefix, layer, permutation=None, kind="conv"):
    """A Conv2D (or DepthwiseConv2D with kind="depthwise"): `<prefix>.weight` and, if it has one, `<prefix>.bias`."""
    entries = [Entry(f"{prefix}.weight", layer.kernel, kind, permutation)]  # Keras 3 depthwise: kernel (kh, kw, C, 1)
    if layer.use_bias:
        entries.append(Entry(f"{prefix}.bias", layer.bias, "vector", permutation))
    return entries


def batch_norm_entries(prefix, layer):
    """A BatchNormalization: torch weight / bias / running_mean / running_var."""
    return [Entry(f"{prefix}.weight", layer.gamma), Entry(f"{prefix}.bias", layer.beta),
            Entry(f"{prefix}.running_mean", layer.moving_mean), Entry(f"{prefix}.running_var", layer.moving_variance)]


def join(prefix, name):
    """"backbone.body" + "conv1" -> "backbone.body.conv1"; an empty prefix gives the bare name."""
    return f"{prefix}.{name}" if prefix else name


def resnet_entries(resnet, prefix="backbone.body"):
    """kdet.backbones.resnet.ResNet <- torchvision.models.resnet names (conv1, bn1, layer1.0.conv1, ...).

    prefix "" maps a bare torchvision.models.resnet<depth> state dict (whose fc.* are then unexpected)."""
    entries = conv_entries(join(prefix, "conv1"), resnet.conv1[-1]) + batch_norm_entries(join(prefix, "bn1"),
                                                                                         resnet.bn1)
    for i, blocks in enumerate(resnet.stages):
        for j, block in enumerate(blocks):
            name = join(prefix, f"layer{i + 1}.{j}")
            convs = [block.conv1, block.conv2] + ([block.conv3] if hasattr(block, "conv3") else [])
            norms = [block.bn1, block.bn2] + ([block.bn3] if hasattr(block, "bn3") else [])
            for k, (conv, norm) in enumerate(zip(convs, norms)):
                entries += conv_entries(f"{name}.conv{k + 1}", conv[-1])
                entries += batch_norm_entries(f"{name}.bn{k + 1}", norm)
            if block.downsample_conv is not None:
                entries += conv_entries(f"{name}.downsample.0", block.downsample_conv)
                entries += batch_norm_entries(f"{name}.downsample.1", block.downsample_bn)
    return entries


def fpn_entries(fpn, prefix="backbone.fpn"):
    """kdet.necks.fpn.FPN <- torchvision.ops.FeaturePyramidNetwork (Conv2dNormActivation wrappers add a ".0")."""
    entries = []
    for i, (inner, layer) in enumerate(zip(fpn.inner_blocks, fpn.layer_blocks)):
        entries += conv_entries(f"{prefix}.inner_blocks.{i}.0", inner)
        entries += conv_entries(f"{prefix}.layer_blocks.{i}.0", layer)
    if fpn.extra_block == "p6p7":
        entries += conv_entries(f"{prefix}.extra_blocks.p6", fpn.p6[-1])
        entries += conv_entries(f"{prefix}.extra_blocks.p7", fpn.p7[-1])
    return entries


def box_delta_permutation(num_anchors):
    """torchvision box outputs are (dx, dy, dw, dh) per anchor; kdet's are (dy, dx, dh, dw)."""
    return tuple(4 * a + k for a in range(num_anchors) for k in (1, 0, 3, 2))


def retina_head_entries(head, prefix="head"):
    """kdet.heads.retina_head.RetinaHead <- torchvision RetinaNetHead (v2 layout: conv.{i}.0)."""
    entries = []
    for subnet, torch_name, output in ((head.classification, "classification_head", "cls_logits"),
                                       (head.regression, "regression_head", "bbox_reg")):
        for i, conv in enumerate(subnet.convs):
            entries += conv_entries(f"{prefix}.{torch_name}.conv.{i}.0", conv)
        permutation = box_delta_permutation(head.num_anchors) if output == "bbox_reg" else None
        entries += conv_entries(f"{prefix}.{torch_name}.{output}", subnet.output_conv, permutation)
    return entries


def retinanet_table(model):
    """kdet RetinaNet <- torchvision retinanet_resnet50_fpn (and the ResNet-18/34/101 variants built alike)."""
    return resnet_entries(model.backbone) + fpn_entries(model.fpn) + retina_head_entries(model.head)


def vgg_entries(vgg, prefix="features", num_stages=5, start=0):
    """kdet.backbones.vgg.VGGBackbone <- torchvision vgg16(_bn).features: one running index over conv (+ BN) +
    ReLU layers and a max-pool per stage, e.g. conv1_1 = features.0, conv1_2 = features.2, conv2_1 = features.5.

    num_stages: how many stages to map; start: the index of the first layer (for a slice of `features`).
    """
    entries, index = [], start
    for convs, _ in vgg.stages[:num_stages]:
        for conv, norm in convs:
            entries += conv_entries(join(prefix, str(index)), conv)
            if norm is not None:
                entries += batch_norm_entries(join(prefix, str(index + 1)), norm)
            index += 3 if norm is not None else 2
        index += 1  # the stage's max-pool
    return entries


def ssd_vgg_entries(features, prefix="backbone"):
    """kdet SSDVGGFeatures <- torchvision SSDFeatureExtractorVGG: features.* up to conv4_3, scale_weight, then
    extra.0 = [maxpool4, conv5_1, relu, conv5_2, relu, conv5_3, relu, fc = [pool5, fc6, relu, fc7, relu]] and
    extra.1-4 = [1x1, relu, 3x3, relu]."""
    entries = vgg_entries(features.vgg, join(prefix, "features"), num_stages=4)
    entries.append(Entry(join(prefix, "scale_weight"), features.l2norm.scale))
    conv5 = [conv for conv, _ in features.vgg.stages[4][0]]
    for conv, index in zip(conv5, (1, 3, 5)):
        entries += conv_entries(join(prefix, f"extra.0.{index}"), conv)
    entries += conv_entries(join(prefix, "extra.0.7.1"), features.fc6)
    entries += conv_entries(join(prefix, "extra.0.7.3"), features.fc7)
    for i, block in enumerate(features.extras):
        convs = [layer for layer in block if hasattr(layer, "kernel")]
        entries += conv_entries(join(prefix, f"extra.{i + 1}.0"), convs[0])
        entries += conv_entries(join(prefix, f"extra.{i + 1}.2"), convs[1])
    return entries


def ssd_head_entries(head, prefix="head"):
    """kdet SSDHead (plain 3x3 convs) <- torchvision SSDHead: {classification,regression}_head.module_list.{k}."""
    entries = []
    for k, (cls_layers, box_layers) in enumerate(zip(head.classification.levels, head.regression.levels)):
        entries += conv_entries(join(prefix, f"classification_head.module_list.{k}"), cls_layers[-1])
        entries += conv_entries(join(prefix, f"regression_head.module_list.{k}"), box_layers[-1],
                                box_delta_permutation(head.num_anchors[k]))
    return entries


def ssd300_table(model):
    """kdet SSD <- torchvision ssd300_vgg16."""
    return ssd_vgg_entries(model.features) + ssd_head_entries(model.head)


def fc_head_entries(head, fc6_name, fc7_name, channels):
    """kdet TwoFCHead <- torch Linear layers `<fc6_name>` (on (c, h, w)-flattened RoI features of `channels`) and
    `<fc7_name>`."""
    return ([ChannelsFirstFlattenEntry(f"{fc6_name}.weight", head.fc6.kernel, "linear", channels=channels),
             Entry(f"{fc6_name}.bias", head.fc6.bias)] + conv_entries(fc7_name, head.fc7, kind="linear"))


def faster_rcnn_table(model):
    """kdet FasterRCNN(backbone="resnet_fpn") <- torchvision fasterrcnn_resnet50_fpn (v1) and its ResNet-18/34/101
    variants built alike: backbone.body.*, backbone.fpn.*, rpn.head.*, roi_heads.box_head.fc6 / fc7,
    roi_heads.box_predictor.*."""
    if model.backbone_name != "resnet_fpn":
        raise ConfigError(f"torchvision's Faster R-CNN layout needs backbone='resnet_fpn', got {model.backbone_name!r}")
    head, predictor = model.rpn_head, model.box_predictor
    entries = resnet_entries(model.backbone, "backbone.body") + fpn_entries(model.fpn, "backbone.fpn")
    for i, conv in enumerate(head.convs):
        entries += conv_entries(f"rpn.head.conv.{i}.0", conv)
    entries += conv_entries("rpn.head.cls_logits", head.cls_logits)
    entries += conv_entries("rpn.head.bbox_pred", head.bbox_pred, box_delta_permutation(head.num_anchors))
    entries += fc_head_entries(model.box_head, "roi_heads.box_head.fc6", "roi_heads.box_head.fc7",
                               channels=model.fpn_channels)
    entries += conv_entries("roi_heads.box_predictor.cls_score", predictor.cls_score, kind="linear")
    entries += conv_entries("roi_heads.box_predictor.bbox_pred", predictor.bbox_pred,
                            box_delta_permutation(predictor.num_classes + 1), kind="linear")
    return entries


def fcn_resnet_table(model):
    """kdet FCNResNet <- torchvision fcn_resnet50 / 101 names: backbone.*, classifier.{0,1,4}, aux_classifier.{0,1,4}."""

    def head(prefix, layer):
        return (conv_entries(f"{prefix}.0", layer.conv) + batch_norm_entries(f"{prefix}.1", layer.bn)
                + conv_entries(f"{prefix}.4", layer.classifier))

    entries = resnet_entries(model.backbone, prefix="backbone") + head("classifier", model.classifier)
    if model.aux_classifier is not None:
        entries += head("aux_classifier", model.aux_classifier)
    return entries


TABLES = {"RetinaNet": retinanet_table, "SSD": ssd300_table, "FasterRCNN": faster_rcnn_table,
          "FCNResNet": fcn_resnet_table}


# -- loading --------------------------------------------------------------------------------------------------------
def read_state_dict(source):
    """A state dict as {name: float32 numpy}: from a dict (numpy arrays or torch tensors), an .npz, or a .pth/.pt
    file (read without torch, `kdet.convert.pth`; a checkpoint {"model": state} is unwrapped)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{path}: no such state dict file")
        if path.suffix == ".npz":
            with np.load(path) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        source = read_pth(path)
        if isinstance(source, dict) and isinstance(source.get("model"), dict):
            source = source["model"]
    if not isinstance(source, dict):
        raise ConfigError(f"state dict must be a mapping of names to arrays, got {type(source).__name__}")
    out = {}
    for name, value in source.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        out[name] = np.asarray(value)
    return out


def table_for(model, table=None):
    """The model's entries: `table` (a list or a builder) or the builder in TABLES for its class name."""
    if table is None:
        name = type(model).__name__
        if name not in TABLES:
            raise ConfigError(f"no torchvision table for {name}; known: {', '.join(sorted(TABLES))}")
        table = TABLES[name]
    if callable(table):
        if not model.built:
            model(np.zeros((1, *model.image_size, 3), np.float32))
        table = table(model)
    return list(table)


def torch_shapes(model, table=None):
    """{torch name: torch shape} the model's table expects (what a matching state dict holds)."""
    return {e.torch_name: e.torch_shape() for e in table_for(model, table)}


def load_state_dict(model, state_dict, table=None):
    """Copy a torchvision state dict into a kdet model.

    Args:
        model: a kdet model whose class has a table (or pass `table`).
        state_dict: {name: array / torch tensor}, or a path to an .npz / .pth file.
        table: optional list of Entry, or a builder `table(model) -> [Entry]`.
    Returns:
        the number of tensors copied.
    Raises:
        KdetError listing missing / unexpected names and shape mismatches; no variable is changed then.
    """
    state = read_state_dict(state_dict)
    entries = table_for(model, table)
    used = {e.torch_name for e in entries}
    if len(used) != len(entries):
        raise KdetError("torchvision table maps one torch name to several variables")
    missing = sorted(used - set(state))
    unexpected = sorted(n for n in state if n not in used and not n.endswith(IGNORED_SUFFIXES))
    mismatched = [f"{e.torch_name}: state {tuple(state[e.torch_name].shape)} != expected {e.torch_shape()}"
                  for e in entries if e.torch_name in state and tuple(state[e.torch_name].shape) != e.torch_shape()]
    if missing or unexpected or mismatched:
        raise KdetError(f"state dict does not fit {type(model).__name__}: " + "; ".join(
            f"{label} ({len(names)}): {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if names))
    for entry in entries:
        entry.variable.assign(entry.to_keras(state[entry.torch_name]))
    return len(entries)


# -- seeded weights for numerical twins ------------------------------------------------------------------------------
def seeded_state_dict(shapes, seed=0):
    """Deterministic random weights with torch-like statistics, for twin tests without committing weights.

    Each tensor comes from its own generator seeded by (seed, crc32(name)), so the values do not depend on the
    order of the names: the torch side (from `model.state_dict()` shapes) and the kdet side (from `torch_shapes`)
    produce identical arrays. Conv / linear weights ~ N(0, 1 / fan_in) (activations keep their scale through deep
    nets); BatchNorm gamma ~ U(0.5, 1), beta and biases ~ N(0, 0.05), running mean ~ N(0, 0.1), running var
    ~ U(0.5, 1.5); a 1-D "scale_weight" (SSD's L2Norm) ~ U(10, 30). BatchNorm's num_batches_tracked is skipped.

    Args:
        shapes: {torch name: shape}.
    Returns:
        {torch name: float32 numpy array}.
    """
    state = {}
    for name, shape in shapes.items():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        shape = tuple(int(s) for s in shape)
        rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif name.endswith("running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("scale_weight"):
            value = rng.uniform(10.0, 30.0, shape)
        elif name.endswith("weight"):
            value = rng.uniform(0.5, 1.0, shape)
        else:
            value = rng.normal(0.0, 0.05, shape)
        state[name] = value.astype(np.float32)
    return state
