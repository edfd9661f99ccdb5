"""Focal loss against the paper's formula in numpy, its cross-entropy limit, and its behaviour at large logits."""
import numpy as np
import pytest
import tensorflow as tf

from kdet.losses.focal import AnchorClassificationLoss, sigmoid_focal_loss


def focal_reference(targets, logits, alpha, gamma):
    """FL = -alpha_t (1 - p_t)^gamma log(p_t), in float64, log(p_t) from the logits (log-sigmoid)."""
    x = logits.astype(np.float64)
    t = targets.astype(np.float64)
    log_p = -np.logaddexp(0, -x)        # log sigmoid(x)
    log_not_p = -np.logaddexp(0, x)     # log (1 - sigmoid(x))
    p = np.exp(log_p)
    p_t = t * p + (1 - t) * (1 - p)
    log_p_t = t * log_p + (1 - t) * log_not_p
    alpha_t = 1.0 if alpha is None else alpha * t + (1 - alpha) * (1 - t)
    return -alpha_t * (1 - p_t) ** gamma * log_p_t


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.75, 0.5), (None, 1.0), (0.5, 5.0)])
def test_focal_loss_matches_numpy_formula(alpha, gamma):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(3, 50, 7)).astype(np.float32)
    targets = (rng.uniform(size=logits.shape) < 0.2).astype(np.float32)
    result = AnchorClassificationLoss("focal", alpha, gamma)(targets, logits).numpy()
    expected = focal_reference(targets, logits, alpha, gamma).sum(-1)  # summed over classes, per anchor
    assert result.shape == (3, 50)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-6)


def test_elementwise_matches_torchvision_definition():
    logits = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], np.float32)
    targets = np.array([0, 1, 1, 0, 1], np.float32)
    np.testing.assert_allclose(sigmoid_focal_loss(targets, logits).numpy(),
                               focal_reference(targets, logits, 0.25, 2.0), rtol=1e-5)


def test_gamma_zero_alpha_half_is_half_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(4, 30, 5)).astype(np.float32)
    targets = (rng.uniform(size=logits.shape) < 0.3).astype(np.float32)
    focal = AnchorClassificationLoss("focal", alpha=0.5, gamma=0.0)(targets, logits).numpy()
    cross_entropy = AnchorClassificationLoss("cross_entropy")(targets, logits).numpy()
    np.testing.assert_allclose(focal, 0.5 * cross_entropy, rtol=1e-5)
    np.testing.assert_allclose(cross_entropy, focal_reference(targets, logits, None, 0.0).sum(-1), rtol=1e-4)


def test_focal_loss_down_weights_easy_examples():
    # An easy negative (p = 0.01, p_t = 0.99) keeps (1 - 0.99)^2 = 1e-4 of its cross-entropy;
    # a hard negative (p = 0.9) keeps 0.81 of it.
    easy, hard = np.log(0.01 / 0.99), np.log(0.9 / 0.1)
    ratio = (AnchorClassificationLoss("focal", None, 2.0)(np.zeros((2, 1)), np.array([[easy], [hard]], np.float32))
             / AnchorClassificationLoss("cross_entropy")(np.zeros((2, 1)), np.array([[easy], [hard]], np.float32)))
    np.testing.assert_allclose(ratio.numpy(), [0.01 ** 2, 0.9 ** 2], rtol=1e-4)


def test_exact_loss_and_gradient_at_large_logits():
    # Keras computes the cross-entropy from the logits behind its sigmoid, so a confidently wrong anchor still has
    # the exact loss and a gradient (a probability-space log clipped at 1e-7 would cap the loss at 16 and zero it).
    logits = tf.constant([[30.0], [-30.0], [20.0]])
    targets = tf.constant([[0.0], [1.0], [1.0]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = AnchorClassificationLoss("focal", 0.25, 2.0)(targets, logits)
    gradient = tape.gradient(loss, logits).numpy()[:, 0]
    np.testing.assert_allclose(loss.numpy(), focal_reference(targets.numpy(), logits.numpy(), 0.25, 2.0)[:, 0],
                               rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(gradient[:2], [0.75, -0.25], rtol=1e-4)
    assert np.all(np.isfinite(gradient))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="classification loss"):
        AnchorClassificationLoss("hinge")
