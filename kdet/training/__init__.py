"""The one training recipe (recipe.py), its callbacks, the Faster R-CNN schedules and tf.distribute strategies.

The package is `kdet.training` (not `kdet.train`) because `kdet.train` is the API function.
"""
