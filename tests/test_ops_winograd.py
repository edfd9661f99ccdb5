"""kdet.ops.winograd: F(2x2, 3x3) against a numpy direct convolution (even / odd sizes, batches, dynamic batch)."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.ops.winograd import conv3x3_winograd, output_tiles, winograd_filter


def numpy_conv3x3(x, kernel, padding="same"):
    """Direct 3x3 stride-1 convolution in float64: x [B, H, W, C], kernel [3, 3, C, K]."""
    border = 1 if padding == "same" else 0
    height, width = x.shape[1] + 2 * border - 2, x.shape[2] + 2 * border - 2
    padded = np.pad(x.astype(np.float64), [(0, 0), (border, border), (border, border), (0, 0)])
    return sum(np.einsum("bhwc,ck->bhwk", padded[:, a:a + height, b:b + width], kernel[a, b].astype(np.float64))
               for a in range(3) for b in range(3))


def test_filter_transform_is_g_kernel_g_transposed():
    kernel = np.random.default_rng(0).normal(0, 1, (3, 3, 2, 3)).astype(np.float32)
    g = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    want = np.stack([np.stack([g @ kernel[:, :, c, k] @ g.T for k in range(3)], -1) for c in range(2)], -2)
    np.testing.assert_allclose(winograd_filter(tf.constant(kernel)).numpy(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape", [(2, 6, 8, 5, 7), (1, 7, 5, 4, 3), (3, 3, 3, 2, 2), (1, 4, 9, 6, 4)])
def test_matches_the_direct_convolution(shape, padding):
    """[B, H, W, C, K]: even, odd and mixed sizes (odd outputs are padded to whole tiles and cropped)."""
    batch, height, width, channels, filters = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(0, 1, (batch, height, width, channels)).astype(np.float32)
    kernel = rng.normal(0, 1, (3, 3, channels, filters)).astype(np.float32)
    got = conv3x3_winograd(tf.constant(x), winograd_filter(tf.constant(kernel)), padding).numpy()
    want = numpy_conv3x3(x, kernel, padding)
    assert got.shape == want.shape
    # Float32 rounding of sums over 9 * C terms of unit scale; the transforms' constants are 0, +-1 and +-0.5.
    tolerance = 2e-5 * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance)
    np.testing.assert_allclose(tf.nn.conv2d(x, kernel, 1, padding.upper()).numpy(), want, rtol=0, atol=tolerance)


def test_dynamic_batch_static_size_and_padding_checked():
    rng = np.random.default_rng(1)
    kernel = rng.normal(0, 1, (3, 3, 3, 2)).astype(np.float32)
    filters = winograd_filter(tf.constant(kernel))
    run = tf.function(lambda t: conv3x3_winograd(t, filters),
                      input_signature=[tf.TensorSpec((None, 5, 6, 3), tf.float32)])
    for batch in (1, 4):
        x = rng.normal(0, 1, (batch, 5, 6, 3)).astype(np.float32)
        np.testing.assert_allclose(run(x).numpy(), numpy_conv3x3(x, kernel), atol=1e-5)
    with pytest.raises(ValueError, match="'same' or 'valid'"):
        conv3x3_winograd(tf.zeros((1, 4, 4, 3)), filters, "full")
    with pytest.raises(ValueError, match="static height and width"):
        tf.function(lambda t: conv3x3_winograd(t, filters),
                    input_signature=[tf.TensorSpec((1, None, None, 3), tf.float32)]).get_concrete_function()


def test_output_tiles_cover_the_output():
    """2x2 tiles over the convolution's output: same keeps H x W, valid is (H - 2) x (W - 2); odd sizes round up."""
    assert output_tiles(16, 16) == (8, 8) and output_tiles(13, 13) == (7, 7)
    assert output_tiles(62, 82, "valid") == (30, 40) and output_tiles(5, 4, "valid") == (2, 1)
