"""CenterNet's losses (Zhou et al. 2019, "Objects as Points", eq. 1-3), as the reference code computes them
(xingyizhou/CenterNet src/lib/models/losses.py: _neg_loss, RegL1Loss).

Heatmap: the penalty-reduced pixel-wise focal loss of CornerNet, with p = sigmoid(logit) and target Y in [0, 1]:
    L_k = -1/N sum_xyc { (1 - p)^alpha log(p)                  if Y = 1
                       { (1 - Y)^beta p^alpha log(1 - p)       otherwise
alpha = 2, beta = 4, N = number of peaks (Y == 1) in the batch; a batch with no object gives the negative part
alone (N taken as 1, the reference's `if num_pos == 0` branch), never NaN. The logs are computed from the logits
(log p = -softplus(-x), log(1 - p) = -softplus(x)), which is exact where the reference clamps p to [1e-4, 1 - 1e-4].

Size and offset: L1 between the prediction read at each object's centre cell and its target, summed over the
valid objects and their 2 coordinates and divided by (2 N_objects + 1e-4), the reference's RegL1Loss (the paper's
1/N with the 2-vector's L1 averaged over its two coordinates). The total is L_k + 0.1 L_size + 1 L_off.
"""
import tensorflow as tf


def penalty_reduced_focal_loss(target, logits, alpha=2.0, beta=4.0):
    """target float32 [B, h, w, C] in [0, 1] (1 at peaks), logits [B, h, w, C] -> scalar float32."""
    target = tf.cast(target, tf.float32)
    logits = tf.cast(logits, tf.float32)
    probability = tf.sigmoid(logits)
    log_p, log_not_p = -tf.nn.softplus(-logits), -tf.nn.softplus(logits)
    positive = tf.cast(tf.equal(target, 1.0), tf.float32)
    positive_loss = tf.pow(1.0 - probability, alpha) * log_p * positive
    negative_loss = tf.pow(1.0 - target, beta) * tf.pow(probability, alpha) * log_not_p * (1.0 - positive)
    num_positive = tf.maximum(tf.reduce_sum(positive), 1.0)
    return -(tf.reduce_sum(positive_loss) + tf.reduce_sum(negative_loss)) / num_positive


def gather_at_centers(feature, indices):
    """feature [B, h, w, D], indices int32 [B, M] (y * w + x) -> [B, M, D]."""
    shape = tf.shape(feature)
    flat = tf.reshape(feature, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.gather(flat, indices, batch_dims=1)


def center_l1_loss(prediction, indices, target, mask):
    """prediction [B, h, w, D] map, indices int32 [B, M], target [B, M, D], mask [B, M] 1 = object.

    Returns scalar float32: sum |prediction at centre - target| over objects and coordinates / (D * N + 1e-4)."""
    predicted = tf.cast(gather_at_centers(prediction, indices), tf.float32)
    weights = tf.cast(mask, tf.float32)[..., None] * tf.ones_like(predicted)
    error = tf.reduce_sum(tf.abs(predicted - tf.cast(target, tf.float32)) * weights)
    return error / (tf.reduce_sum(weights) + 1e-4)
