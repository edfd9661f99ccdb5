"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016), written in ops every TFLite runtime has (PAD, SPACE_TO_DEPTH, STRIDED_SLICE,
ADD / SUB, 1x1 CONV_2D, CONCATENATION, DEPTH_TO_SPACE), for kdet's float TFLite exports (kdet.export.layer_forms).

Each 2x2 output tile is computed from the 4x4 input tile d under it as  Y = A^T [(G g G^T) * (B^T d B)] A:
the 16 products of one tile are 16 independent [tiles, C] x [C, K] matmuls (one 1x1 convolution each) instead of
the 9 taps of a direct convolution over 4x as many positions: 2.25x fewer multiplications, paid for with the
transforms' additions. LiteRT 2.3's XNNPACK has no Winograd kernel for fp32, so its direct 3x3 convolutions run at
up to 1.3x TensorFlow's (oneDNN); in this form Faster R-CNN's FPN P2 convolution (256 -> 256 at 120x160) takes 0.73x
of TF's time instead of 1.10x (benchmarks/bench_tflite_contractions.py). Same function as the direct convolution,
float rounding only: the transforms' constants are 0, +-1 and +-0.5 (relative difference about 1e-6 measured).
"""
import numpy as np
import tensorflow as tf

# F(2x2, 3x3)'s filter transform G (Lavin & Gray, section 4.1); B^T and A^T are written out below as ADD / SUB.
FILTER_TRANSFORM = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], np.float32)


def winograd_filter(kernel):
    """kernel [3, 3, C, K] -> U = G g G^T [4, 4, C, K] (the filter in the transformed domain)."""
    g = tf.constant(FILTER_TRANSFORM, kernel.dtype)
    return tf.einsum("ia,abck,jb->ijck", g, kernel, g)


def output_tiles(height, width, padding="same"):
    """(tiles_y, tiles_x): the 2x2 output tiles of a 3x3 stride-1 convolution of an H x W input ("same" / "valid")."""
    out_h, out_w = (height, width) if padding == "same" else (height - 2, width - 2)
    return (out_h + 1) // 2, (out_w + 1) // 2


def _transform_1d(d0, d1, d2, d3):
    """B^T applied along one tile axis: four [B, h, w, C] tensors -> their four transformed rows."""
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def conv3x3_winograd(inputs, filters, padding="same"):
    """3x3 stride-1 convolution in the Winograd form.

    Args:
        inputs: [B, H, W, C] float32 with static H, W.
        filters: [4, 4, C, K] from `winograd_filter`.
        padding: "same" (zero padding of 1) or "valid" (output (H - 2) x (W - 2)), as tf.nn.conv2d's.
    Returns:
        [B, H', W', K], equal to tf.nn.conv2d(inputs, kernel, 1, padding.upper()) up to float rounding.
    """
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:
        raise ValueError("conv3x3_winograd needs a static height and width")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    border = 1 if padding == "same" else 0
    out_h, out_w = height + 2 * border - 2, width + 2 * border - 2
    channels = filters.shape[2]
    tiles_y, tiles_x = output_tiles(height, width, padding)
    # Padded to 2 * tiles + 2 rows and columns (odd outputs get one more row / column, cropped at the end), then the
    # 2x2 phases side by side in the channels: input row 2 * t + u of tile t is phase u % 2 at row t + u // 2.
    padded = tf.pad(inputs, [[0, 0], [border, border + out_h % 2], [border, border + out_w % 2], [0, 0]])
    phases = tf.nn.space_to_depth(padded, 2)  # [B, tiles_y + 1, tiles_x + 1, 4 * C]

    def tap(u, v):  # d[u][v] of every tile: [B, tiles_y, tiles_x, C]
        block = ((u % 2) * 2 + v % 2) * channels
        return phases[:, u // 2:u // 2 + tiles_y, v // 2:v // 2 + tiles_x, block:block + channels]

    columns = [_transform_1d(*(tap(u, v) for u in range(4))) for v in range(4)]  # B^T d, column v
    products = []
    for i in range(4):
        row = _transform_1d(*(columns[v][i] for v in range(4)))  # (B^T d B)[i, :]
        products.append([tf.nn.conv2d(row[j], filters[i, j][None, None], 1, "VALID") for j in range(4)])
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] along i, then along j.
    partial = [[products[0][j] + products[1][j] + products[2][j], products[1][j] - products[2][j] - products[3][j]]
               for j in range(4)]
    outputs = []
    for a in range(2):
        m0, m1, m2, m3 = (partial[j][a] for j in range(4))
        outputs += [m0 + m1 + m2, m1 - m2 - m3]  # output pixels (a, 0) and (a, 1) of every tile
    tiled = tf.nn.depth_to_space(tf.concat(outputs, axis=-1), 2)  # [B, 2 * tiles_y, 2 * tiles_x, K]
    return tiled[:, :out_h, :out_w] if (out_h % 2 or out_w % 2) else tiled
