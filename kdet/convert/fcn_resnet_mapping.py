"""torchvision -> kdet table for FCNResNet (torchvision's fcn_resnet50 / fcn_resnet101), built from the pieces of
`kdet.convert.torchvision`: `load_state_dict(model, state, table=fcn_resnet_table)`.

It lives here, not beside the model, because models never import convert (imports only point down).
"""
from kdet.convert.torchvision import batch_norm_entries, conv_entries, resnet_entries


def fcn_resnet_table(model):
    """kdet FCNResNet <- torchvision state dict names: backbone.*, classifier.{0,1,4}, aux_classifier.{0,1,4}."""

    def head(prefix, layer):
        return (conv_entries(f"{prefix}.0", layer.conv) + batch_norm_entries(f"{prefix}.1", layer.bn)
                + conv_entries(f"{prefix}.4", layer.classifier))

    entries = resnet_entries(model.backbone, prefix="backbone") + head("classifier", model.classifier)
    if model.aux_classifier is not None:
        entries += head("aux_classifier", model.aux_classifier)
    return entries
