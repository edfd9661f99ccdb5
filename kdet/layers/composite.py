"""A base for layers made only of sub-layers (blocks, trees, hourglasses, decoders).

Keras 3 builds a layer without a `build` method by tracing its `call` symbolically once before the real call. For
nested blocks every level traces everything below it again: a 2-stack Hourglass-104 spent ~45 s tracing before its
first forward pass. A composite layer owns no weights of its own, so it can be marked built at once and let each
sub-layer build on its first call (one pass, eager or symbolic).
"""
import keras


class CompositeLayer(keras.layers.Layer):
    """A layer whose weights all live in sub-layers: build() only marks it built. Loading a saved model rebuilds
    it the way a first call does (the enclosing model is called symbolically)."""

    def build(self, input_shape):
        self.built = True
