"""Thin keras.layers.Layer wrappers over kdet.ops."""
from kdet.layers.grouped_conv import GroupedConv2D
from kdet.layers.roi_align import MultiScaleRoIAlign, RoIAlign
from kdet.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = ["GroupedConv2D", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "MultiScaleRoIAlign", "RoIAlign"]
