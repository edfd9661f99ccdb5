"""Thin keras.layers.Layer wrappers over kdet.ops."""
from kdet.layers.deform_conv import DeformConv2D
from kdet.layers.roi_align import MultiScaleRoIAlign, RoIAlign
from kdet.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = ["DeformConv2D", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "MultiScaleRoIAlign", "RoIAlign"]
