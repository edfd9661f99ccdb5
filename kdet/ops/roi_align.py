"""RoIAlign and multi-scale RoIAlign with torchvision.ops semantics, on NHWC features and yxyx pixel boxes.

torchvision's RoIAlign (csrc/ops/cpu/roi_align_kernel.cpp), in feature coordinates (box * spatial_scale):
  * aligned=True shifts the box by -0.5 so pixel centres sit at integer + 0.5 (Mask R-CNN / Detectron2);
    aligned=False keeps the box and enlarges RoIs smaller than one cell to size 1 (the legacy behaviour);
  * each of the out_h x out_w bins averages g_h x g_w bilinear samples at the centres of a regular sub-grid,
    g = sampling_ratio, or ceil(roi_size / output_size) per RoI when sampling_ratio <= 0 (zero samples, output 0,
    for an empty aligned RoI);
  * a sample more than one cell outside the map reads 0; within that cell it is clamped to the border.

Two paths compute exactly that. The default samples with `tf.image.crop_and_resize` on the features with a one-cell
edge-replicated border (which turns its extrapolation-outside-the-map rule into torchvision's clamp-then-zero rule)
and average-pools the samples. When `builtins_only_enabled()` (TFLite has no CropAndResize builtin) the twin
gathers, for every bin, the D_y x D_x feature cells its samples read (GATHER, in 16 pieces of bins so LiteRT keeps them
in cache) and applies the bilinear weights and the bin average in one weighted sum over those cells (MUL + SUM):
torchvision's bilinear weights and zero-outside rule are separable in y and x, so a bin's weight on a cell is
wy * wx. Along each axis D is 2 * grid (each sample's own two rows), or grid + 1 for RoIs whose bins span at most
that many rows (bins of about a cell per sample or less: small RoIs, adaptive grids): up to 2x fewer per axis.
Both agree to float rounding.
"""
import math

import tensorflow as tf

from kdet.errors import ConfigError
from kdet.ops.box_ops import box_area, split_coordinates
from kdet.ops.mode import builtins_only_enabled

DEFAULT_DYNAMIC_MAX_SAMPLING_RATIO = 8  # bound for sampling_ratio <= 0 when the feature size is not static
GATHER_PIECES = 16  # the builtins twin's gather + weighted sum in this many pieces (see _pool_gathered_cells)


def _pair(value):
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _sample_crop_and_resize(features, box_indices, y0, y_step, ny, x0, x_step, nx):
    """Bilinear values at (y0 + (i + .5) * y_step, x0 + (j + .5) * x_step), i < ny, j < nx.

    features: [B, H, W, C]; box_indices, y0, y_step, x0, x_step: [K]; ny, nx: ints -> [K, ny, nx, C].
    """
    # One edge-replicated cell on each side: a sample in [-1, 0] then interpolates between two copies of row 0,
    # i.e. torchvision's clamp, and one beyond -1 falls outside the padded map and reads extrapolation_value 0.
    padded = tf.pad(features, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    span_y = tf.cast(tf.shape(features)[1], tf.float32) + 1.0  # padded height - 1
    span_x = tf.cast(tf.shape(features)[2], tf.float32) + 1.0
    first_y = y0 + 0.5 * y_step + 1.0
    last_y = y0 + (tf.cast(ny, tf.float32) - 0.5) * y_step + 1.0
    first_x = x0 + 0.5 * x_step + 1.0
    last_x = x0 + (tf.cast(nx, tf.float32) - 0.5) * x_step + 1.0
    crop_boxes = tf.stack([first_y / span_y, first_x / span_x, last_y / span_y, last_x / span_x], axis=-1)
    return tf.image.crop_and_resize(padded, crop_boxes, box_indices, tf.stack([ny, nx]),
                                    method="bilinear", extrapolation_value=0.0)


def _axis_weights(positions, size):
    """torchvision's bilinear_interpolate along one axis: positions [K, n] -> (low, high, fraction, inside)."""
    size_f = tf.cast(size, tf.float32)
    inside = (positions >= -1.0) & (positions <= size_f)
    positions = tf.maximum(positions, 0.0)
    low_f = tf.floor(positions)
    at_end = low_f >= size_f - 1.0
    low = tf.cast(tf.minimum(low_f, size_f - 1.0), tf.int32)
    high = tf.minimum(low + 1, size - 1)
    fraction = tf.where(at_end, 0.0, positions - low_f)
    return low, high, fraction, inside


def _axis_bins(start, bin_size, grid, n_bins, size, length, compact):
    """Feature rows (or columns) each bin reads along one axis, with their weights.

    Bin p averages the bilinear samples start + p * bin_size + (i + 0.5) * bin_size / grid, i < grid <= size;
    samples i >= grid weigh 0. start, bin_size: [K] float; grid: [K] int32. Returns (rows [K, n_bins, D] int32,
    weights [K, n_bins, D] float32) with D = 2 * size (each sample's low and high row) or, when `compact`,
    D = size + 1 (rows first..first + size, first = the bin's lowest row; exact only for RoIs whose bins span at most
    size + 1 rows, see `_bin_span`). Weights hold torchvision's bilinear weight, its zero-outside rule and 1 / grid.
    """
    grid_f = tf.cast(grid, tf.float32)[:, None, None]
    sample = tf.range(size, dtype=tf.float32)[None, None, :]
    positions = (start[:, None, None] + tf.range(n_bins, dtype=tf.float32)[None, :, None] * bin_size[:, None, None]
                 + (sample + 0.5) * (bin_size[:, None, None] / grid_f))  # [K, n_bins, size]
    low, high, fraction, inside = _axis_weights(positions, length)
    scale = tf.where(inside & (sample < grid_f), 1.0 / grid_f, 0.0)
    w_low, w_high = (1.0 - fraction) * scale, fraction * scale
    if not compact:
        return (tf.reshape(tf.stack([low, high], -1), [-1, n_bins, 2 * size]),
                tf.reshape(tf.stack([w_low, w_high], -1), [-1, n_bins, 2 * size]))
    first = tf.reduce_min(low, axis=-1, keepdims=True)  # [K, n_bins, 1]
    slots = size + 1  # one_hot drops out-of-range slots: only zero-weight (outside) samples can have them
    weights = tf.reduce_sum(tf.one_hot(low - first, slots) * w_low[..., None]
                            + tf.one_hot(high - first, slots) * w_high[..., None], axis=2)
    rows = tf.minimum(first + tf.range(slots)[None, None, :], length - 1)  # past the edge: weight 0, any valid row
    return rows, weights


def _bin_span(start, bin_size, grid, n_bins, size, length):
    """[K] int32: the most rows any bin of the RoI reads along this axis (lowest low to highest high row)."""
    rows, _ = _axis_bins(start, bin_size, grid, n_bins, size, length, compact=False)
    return tf.reduce_max(tf.reduce_max(rows, -1) - tf.reduce_min(rows, -1) + 1, axis=-1)


def _gather_cells(table, index):
    """table [N, C], index [n, cells] int32 -> [n, cells, C] (a seam for benchmarks/profile_roi_align_tflite.py)."""
    return tf.gather(table, index)


def _pool_gathered_cells(features, box_indices, start_y, bin_h, grid_h, start_x, bin_w, grid_w, out_h, out_w, size,
                        compact_y, compact_x):
    """Builtins-only RoIAlign bins: a gather of the D_y x D_x cells every bin reads, then one weighted sum that applies
    the bilinear weights and the bin average together (bilinear weights and the zero-outside rule are separable in
    y and x, so a bin's weight on cell (r, c) is wy[r] * wx[c]); compact_y / compact_x: `_axis_bins`' layout per
    axis. -> [K, out_h, out_w, C]."""
    shape = tf.shape(features)
    height, width = shape[1], shape[2]
    channels = features.shape[-1] if features.shape[-1] is not None else shape[3]
    rows, wy = _axis_bins(start_y, bin_h, grid_h, out_h, size, height, compact_y)  # [K, out_h, D_y]
    cols, wx = _axis_bins(start_x, bin_w, grid_w, out_w, size, width, compact_x)  # [K, out_w, D_x]
    cells = rows.shape[-1] * cols.shape[-1]
    index = ((box_indices * height)[:, None, None, None, None] + rows[:, :, None, :, None]) * width \
        + cols[:, None, :, None, :]  # [K, out_h, out_w, D_y, D_x]
    weight = tf.reshape(wy[:, :, None, :, None] * wx[:, None, :, None, :], [-1, cells, 1])
    index = tf.reshape(index, [-1, cells])
    table = tf.reshape(features, [-1, channels])
    # LiteRT runs GATHER, MUL and SUM on these run-time shapes with its own single-threaded kernels, each pass over
    # [K*out_h*out_w, D_y*D_x, C] values (0.8 GB for 1000 RoIs 7x7 at D = 4): done in GATHER_PIECES pieces of bins,
    # the values stay in cache between the three ops. MUL + SUM: in LiteRT about 3x faster than the same contraction
    # as BATCH_MATMUL [N, 1, D*D] x [N, D*D, C] (which copies its right operand transposed).
    bins = tf.shape(index)[0]
    pooled = []
    for piece in range(GATHER_PIECES):
        begin, end = bins * piece // GATHER_PIECES, bins * (piece + 1) // GATHER_PIECES
        values = _gather_cells(table, index[begin:end])  # [bins in the piece, D_y*D_x, C]
        pooled.append(tf.reduce_sum(values * weight[begin:end], axis=1))
    return tf.reshape(tf.concat(pooled, axis=0), [-1, out_h, out_w, channels])


def _pool_builtins(features, box_indices, start_y, bin_h, grid_h, start_x, bin_w, grid_w, out_h, out_w, size):
    """`_pool_gathered_cells` where, along each axis separately, RoIs whose bins span at most size + 1 rows (or
    columns) read that many instead of 2 * size (bins of at most about one cell per sample: small RoIs, adaptive
    grids, and about half the axes of Faster R-CNN's proposals at grid 2): four groups, 9 to 16 cells per bin."""
    if size < 2:
        return _pool_gathered_cells(features, box_indices, start_y, bin_h, grid_h, start_x, bin_w, grid_w, out_h,
                                   out_w, size, compact_y=False, compact_x=False)
    shape = tf.shape(features)
    wide_y = tf.cast(_bin_span(start_y, bin_h, grid_h, out_h, size, shape[1]) > size + 1, tf.int32)
    wide_x = tf.cast(_bin_span(start_x, bin_w, grid_w, out_w, size, shape[2]) > size + 1, tf.int32)

    def compute(layout, idx):
        take = lambda t: tf.gather(t, idx)  # noqa: E731
        return _pool_gathered_cells(features, take(box_indices), take(start_y), take(bin_h), take(grid_h),
                                   take(start_x), take(bin_w), take(grid_w), out_h, out_w, size,
                                   compact_y=layout < 2, compact_x=layout % 2 == 0)

    return run_by_group(2 * wide_y + wide_x, (0, 1, 2, 3), compute)


def _bin_average_matrix(grid, bins, samples):
    """[K, bins, samples]: row p averages samples j with j // grid == p (grid [K] int32 >= 1)."""
    j = tf.range(samples)[None, None, :]
    p = tf.range(bins)[None, :, None]
    grid = grid[:, None, None]
    return tf.cast(tf.equal(j // grid, p), tf.float32) / tf.cast(grid, tf.float32)


def run_by_group(group_ids, group_values, compute):
    """Apply `compute(value, indices)` to the RoIs of each group and put the results back in RoI order.

    group_ids: [K] int32, each equal to one of the Python ints `group_values`; compute returns [k_g, ...] for
    the k_g RoIs `indices` ([k_g] int32). Returns [K, ...]. Uses WHERE / GATHER / SCATTER_ND only (TFLite builtins).
    """
    orders, results = [], []
    for value in group_values:
        indices = tf.cast(tf.reshape(tf.where(tf.equal(group_ids, value)), [-1]), tf.int32)
        orders.append(indices)
        results.append(compute(value, indices))
    order = tf.concat(orders, axis=0)
    num = tf.shape(group_ids)[0]
    # One spare slot, cut off again: TF Lite's reference SCATTER_ND (tf.lite.Interpreter, which int8 calibration
    # runs) divides by the output's dimensions, so an empty group_ids (a pyramid level without RoIs) raised SIGFPE.
    inverse = tf.scatter_nd(order[:, None], tf.range(num), [num + 1])[:num]
    return tf.gather(tf.concat(results, axis=0), inverse)


def roi_align(features, boxes, box_indices, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False,
              max_sampling_ratio=None):
    """torchvision.ops.roi_align on NHWC features.

    Args:
        features: [B, H, W, C] float32.
        boxes: [K, 4] yxyx in input-image pixels (torchvision takes xyxy).
        box_indices: [K] int, the image of each box in the batch.
        output_size: int or (out_h, out_w).
        spatial_scale: feature cells per input pixel (1 / stride).
        sampling_ratio: samples per bin side; <= 0 means ceil(roi_size / output_size) per RoI, as torchvision.
        aligned: shift boxes by -0.5 cell (pixel-centre convention; True for Mask R-CNN quality).
        max_sampling_ratio: only for sampling_ratio <= 0: the largest per-RoI grid computed exactly. Default:
            ceil(max(H / out_h, W / out_w)) from the static feature size, so every RoI inside the feature map
            matches torchvision exactly; larger RoIs use this many samples per bin side (torchvision would use
            more). 8 if the feature size is not static.
    Returns:
        [K, out_h, out_w, C] float32.
    """
    features = tf.convert_to_tensor(features, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    out_h, out_w = _pair(output_size)
    builtins = builtins_only_enabled()

    offset = 0.5 if aligned else 0.0
    y1, x1, y2, x2 = split_coordinates(boxes * spatial_scale)
    start_y, start_x = y1 - offset, x1 - offset
    roi_h, roi_w = (y2 - offset) - start_y, (x2 - offset) - start_x
    if not aligned:
        roi_h, roi_w = tf.maximum(roi_h, 1.0), tf.maximum(roi_w, 1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w

    if sampling_ratio > 0:
        grid = int(sampling_ratio)
        if builtins:
            grids = tf.fill(tf.shape(start_y), grid)
            return _pool_builtins(features, box_indices, start_y, bin_h, grids, start_x, bin_w, grids, out_h, out_w,
                                  grid)
        values = _sample_crop_and_resize(features, box_indices, start_y, bin_h / grid, out_h * grid, start_x,
                                         bin_w / grid, out_w * grid)
        # Bin average = grid x grid average pooling: several times faster than reshape + reduce_mean on CPU.
        return values if grid == 1 else tf.nn.avg_pool2d(values, grid, grid, "VALID")

    if max_sampling_ratio is None:
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            max_sampling_ratio = DEFAULT_DYNAMIC_MAX_SAMPLING_RATIO
        else:
            max_sampling_ratio = max(math.ceil(height / out_h), math.ceil(width / out_w), 1)
    grid_h = tf.math.ceil(roi_h / out_h)  # torchvision: ceil(roi_height / pooled_height)
    grid_w = tf.math.ceil(roi_w / out_w)
    empty = (grid_h <= 0) | (grid_w <= 0)  # aligned RoI of zero (or negative) size: torchvision sums nothing
    # Clip before the cast: a huge RoI must not overflow int32.
    grid_h = tf.cast(tf.clip_by_value(grid_h, 1.0, float(max_sampling_ratio)), tf.int32)
    grid_w = tf.cast(tf.clip_by_value(grid_w, 1.0, float(max_sampling_ratio)), tf.int32)
    step_h = bin_h / tf.cast(grid_h, tf.float32)
    step_w = bin_w / tf.cast(grid_w, tf.float32)

    # RoIs are grouped by their larger grid size s so each group is one sampler call of static size
    # (out_h * s) x (out_w * s); the bin average then ignores the samples past a RoI's own grid.
    def compute(size, idx):
        take = lambda t: tf.gather(t, idx)  # noqa: E731
        if builtins:
            return _pool_builtins(features, take(box_indices), take(start_y), take(bin_h), take(grid_h),
                                  take(start_x), take(bin_w), take(grid_w), out_h, out_w, size)
        values = _sample_crop_and_resize(features, take(box_indices), take(start_y), take(step_h), out_h * size,
                                         take(start_x), take(step_w), out_w * size)
        rows = _bin_average_matrix(take(grid_h), out_h, out_h * size)
        cols = _bin_average_matrix(take(grid_w), out_w, out_w * size)
        values = tf.einsum("kpj,kjlc->kplc", rows, values)
        return tf.einsum("kql,kplc->kpqc", cols, values)

    group = tf.maximum(grid_h, grid_w)
    pooled = run_by_group(group, range(1, max_sampling_ratio + 1), compute)
    return tf.where(empty[:, None, None, None], 0.0, pooled)


def multiscale_roi_align(features_by_level, boxes, box_indices, output_size, strides, sampling_ratio=2,
                         canonical_scale=224, canonical_level=4, aligned=False):
    """torchvision.ops.MultiScaleRoIAlign: each RoI is pooled from one FPN level chosen by its size.

    Level k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6), clamped to the levels present
    (FPN paper eq. 1, torchvision LevelMapper), where level k has stride 2**k.

    Args:
        features_by_level: list of [B, H_l, W_l, C] maps, finest first (e.g. P2..P5).
        boxes: [K, 4] yxyx input-image pixels; box_indices: [K] int image index.
        output_size: int or (out_h, out_w).
        strides: stride of each level, powers of two, e.g. (4, 8, 16, 32).
        sampling_ratio, aligned: as `roi_align` (torchvision's MultiScaleRoIAlign uses aligned=False).
    Returns:
        [K, out_h, out_w, C] float32.
    """
    if len(features_by_level) != len(strides):
        raise ConfigError(f"multiscale_roi_align: {len(features_by_level)} feature levels but {len(strides)} strides")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    box_indices = tf.cast(box_indices, tf.int32)
    levels = [int(round(math.log2(stride))) for stride in strides]
    if any(2 ** level != stride for level, stride in zip(levels, strides)) or levels != list(
            range(levels[0], levels[0] + len(levels))):
        raise ConfigError(f"multiscale_roi_align: strides must be consecutive powers of two, got {strides}")

    def pool(level_index, box_subset, index_subset):
        return roi_align(features_by_level[level_index], box_subset, index_subset, output_size,
                         spatial_scale=1.0 / strides[level_index], sampling_ratio=sampling_ratio, aligned=aligned)

    if len(strides) == 1:
        return pool(0, boxes, box_indices)
    scale = tf.sqrt(box_area(boxes))
    target = tf.floor(canonical_level + tf.math.log(scale / canonical_scale) / math.log(2.0) + 1e-6)
    target = tf.clip_by_value(target, levels[0], levels[-1])
    level_ids = tf.cast(target, tf.int32) - levels[0]
    return run_by_group(level_ids, range(len(strides)),
                        lambda i, idx: pool(i, tf.gather(boxes, idx), tf.gather(box_indices, idx)))
