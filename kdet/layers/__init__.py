"""Thin keras.layers.Layer wrappers over kdet.ops."""
from kdet.layers.roi_align import MultiScaleRoIAlign, RoIAlign
from kdet.layers.unpooling import MaxPoolingWithArgmax2D, MaxUnpooling2D

__all__ = ["MaxPoolingWithArgmax2D", "MaxUnpooling2D", "MultiScaleRoIAlign", "RoIAlign"]
