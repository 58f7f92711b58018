import numpy as np
import torch

from probe_md.calibration import fit_temperature_and_bias
from probe_md.metrics import expected_calibration_error


def test_calibration_lowers_ece_on_overconfident_shifted_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0.0, 2.0, 4000)
    labels = rng.random(4000) < 1 / (1 + np.exp(-true_logits))
    distorted = 4.0 * true_logits + 3.0  # over-confident and biased towards "reliable"
    p_before = 1 / (1 + np.exp(-distorted))
    temperature, bias = fit_temperature_and_bias(torch.tensor(distorted), torch.tensor(labels))
    p_after = 1 / (1 + np.exp(-(distorted + bias) / temperature))
    ece_before = expected_calibration_error(p_before, labels)
    ece_after = expected_calibration_error(p_after, labels)
    assert ece_after < 0.03 < ece_before
    assert abs(temperature - 4.0) < 0.5 and abs(bias + 3.0) < 0.5
