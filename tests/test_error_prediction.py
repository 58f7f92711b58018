"""Predicted error: quantile readout on the pooled vector + conformal widening."""

import numpy as np
import pytest
import torch

from probe_md.error_prediction import (
    conformal_offset,
    error_floor,
    interval_coverage,
    log_errors,
    pinball_loss,
    pooled_vectors,
    predicted_errors,
    widened_log_bounds,
    width_scale,
)
from probe_md.head import NORMAL_Z90
from probe_md.metrics import auroc, spearman
from probe_md.training import ProbeClassifier, TrainingConfig, atom_error_loss, atom_log_error_ratios, pack


def graded_set(n: int, seed: int, dim: int = 8):
    """The error grows with how far a few atoms are shifted (log-normal noise around it)."""
    rng = np.random.default_rng(seed)
    features, errors = [], []
    for _ in range(n):
        atoms = rng.normal(size=(int(rng.integers(8, 30)), dim))
        shift = rng.uniform(0.0, 4.0)
        atoms[:3, :2] += shift
        features.append(atoms)
        errors.append(0.01 * np.exp(0.8 * shift + rng.normal(0, 0.2)))
    return features, np.array(errors)


@pytest.fixture(scope="module")
def fitted():
    features, errors = graded_set(300, seed=0)
    config = TrainingConfig(max_epochs=40, patience=15, seed=0)
    return ProbeClassifier({"hidden_dim": 32}, config, verbose=False).fit(features, errors < 0.1, errors)


def test_predicted_error_ranks_and_covers_held_out_structures(fitted):
    features, errors = graded_set(300, seed=1)
    predicted = fitted.predict_error(features)
    assert predicted.shape == (300, 3)
    assert np.all(predicted[:, 0] <= predicted[:, 1]) and np.all(predicted[:, 1] <= predicted[:, 2])
    assert spearman(predicted[:, 1], errors) > 0.8  # the noise allows 0.98
    assert 0.7 <= interval_coverage(predicted, errors) <= 0.9
    assert fitted.training_summary_["error_interval_offset"] == pytest.approx(float(fitted.head_.error_interval_offset))


def test_a_head_trained_without_errors_predicts_nan():
    features, errors = graded_set(80, seed=2)
    config = TrainingConfig(max_epochs=3, seed=0)
    classifier = ProbeClassifier({"hidden_dim": 8}, config, verbose=False).fit(features, errors < 0.1)
    assert np.isnan(classifier.predict_error(features[:3])).all()


def test_conformal_offset_reaches_the_coverage_on_exchangeable_data():
    rng = np.random.default_rng(3)
    target = rng.normal(0, 1, 4000)
    too_narrow = np.tile([-0.3, 0.0, 0.3], (4000, 1))
    offset = conformal_offset(too_narrow[:2000], target[:2000], coverage=0.8)
    widened = too_narrow[2000:] + np.array([-offset, 0, offset])
    covered = np.mean((target[2000:] >= widened[:, 0]) & (target[2000:] <= widened[:, 2]))
    assert offset > 0 and abs(covered - 0.8) < 0.03


@pytest.mark.parametrize("offset", [0.3, -0.05, -5.0])
def test_widened_log_bounds_are_the_heads_own(fitted, offset):
    """The numpy widening (out-of-fold coverage in `calibrate`) is the head's, including a
    negative offset larger than a half-width: the bound stops at the median."""
    head = fitted.head_
    pooled = pooled_vectors(head, graded_set(20, seed=4)[0])
    saved = head.error_interval_offset.clone()
    try:
        with torch.no_grad():
            raw = head.readout_log_error(*pooled, widened=False).double().numpy()
            head.error_interval_offset.fill_(offset)
            expected = head.readout_log_error(*pooled).double().numpy()
    finally:
        head.error_interval_offset.copy_(saved)
    widened = widened_log_bounds(raw, offset, width_scale(head, pooled.atom_counts))
    np.testing.assert_allclose(widened, expected, atol=1e-5)
    if offset < -1:
        np.testing.assert_allclose(widened[:, 0], widened[:, 1])


def test_pinball_loss_is_minimised_by_the_quantiles():
    target = torch.tensor(np.random.default_rng(4).normal(0, 1, 20000), dtype=torch.float32)
    right = torch.tensor([[-1.2816, 0.0, 1.2816]]).expand(len(target), 3)
    wrong = torch.tensor([[-0.5, 0.3, 0.5]]).expand(len(target), 3)
    assert pinball_loss(right, target) < pinball_loss(wrong, target)


def graded_atom_errors(features: list[np.ndarray], errors: np.ndarray, seed: int) -> list[np.ndarray]:
    """Per-atom force errors: the three shifted atoms carry most of the structure's error."""
    rng = np.random.default_rng(seed)
    atom_errors = []
    for atoms, error in zip(features, errors):
        per_atom = np.full(len(atoms), 0.3 * error) * rng.lognormal(0, 0.1, len(atoms))
        per_atom[:3] = 3.0 * error
        atom_errors.append(per_atom)
    return atom_errors


@pytest.fixture(scope="module")
def fitted_from_error():
    features, errors = graded_set(300, seed=0)
    config = TrainingConfig(max_epochs=40, patience=15, seed=0)
    return ProbeClassifier({"hidden_dim": 32}, config, verbose=False).fit(
        features, errors < 0.1, errors, 0.1, graded_atom_errors(features, errors, 0))


def test_with_the_threshold_the_logit_is_the_predicted_errors_margin(fitted_from_error):
    head = fitted_from_error.head_
    assert float(head.logit_from_error) == 1.0 and float(head.log_threshold) == pytest.approx(np.log(0.1))
    features, errors = graded_set(200, seed=3)
    pooled = pooled_vectors(head, features)
    with torch.no_grad():
        lower, median, upper = head.readout_log_error(*pooled, widened=False).double().unbind(1)
    threshold = np.log(0.1)
    spread = torch.where(median > threshold, median - lower, upper - median) / NORMAL_Z90
    expected = ((threshold - median) / spread + float(head.logit_bias)) / float(head.temperature)
    np.testing.assert_allclose(fitted_from_error.predict_logit(features), expected.numpy(), rtol=1e-4, atol=1e-4)
    assert auroc(-fitted_from_error.predict_logit(features), errors >= 0.1) > 0.9


def test_the_atom_error_target_trains_value_channel_zero(fitted_from_error):
    features, errors = graded_set(300, seed=0)
    config = TrainingConfig(max_epochs=40, patience=15, seed=0, atom_error_loss_weight=0.0)
    without = ProbeClassifier({"hidden_dim": 32}, config, verbose=False).fit(
        features, errors < 0.1, errors, 0.1, graded_atom_errors(features, errors, 0))
    held_out, held_out_errors = graded_set(100, seed=4)
    targets = atom_log_error_ratios(graded_atom_errors(held_out, held_out_errors, 4), 0.1)
    packed = pack(held_out)
    target = torch.as_tensor(np.concatenate(targets))
    with torch.no_grad():
        trained = float(atom_error_loss(fitted_from_error.head_, packed, target))
        untrained = float(atom_error_loss(without.head_, packed, target))
    assert trained < 0.5 * untrained  # 0.51 vs 1.51 here; other atoms carry what their features cannot tell


def test_fit_names_inconsistent_errors_thresholds_and_atom_errors():
    features, errors = graded_set(40, seed=5)
    classifier = ProbeClassifier({"hidden_dim": 8}, TrainingConfig(max_epochs=2), verbose=False)
    with pytest.raises(ValueError, match="labels are not errors < threshold"):
        classifier.fit(features, errors < 0.2, errors, 0.1)
    with pytest.raises(ValueError, match="need the threshold"):
        classifier.fit(features, errors < 0.1, errors, None, graded_atom_errors(features, errors, 5))
    with pytest.raises(ValueError, match="do not match"):
        classifier.fit(features, errors < 0.1, errors, 0.1, [e[:-1] for e in graded_atom_errors(features, errors, 5)])


def test_errors_far_below_the_threshold_share_one_floor():
    errors = np.array([0.0, 1e-9, 0.0005, 0.002, 0.5])
    logs = log_errors(errors, threshold=0.1).double().numpy()
    np.testing.assert_allclose(logs[:3], np.log(0.001), rtol=1e-6)  # 1 % of the threshold
    np.testing.assert_allclose(logs[3:], np.log(errors[3:]), rtol=1e-6)
    assert log_errors(np.array([0.0])).item() == pytest.approx(np.log(1e-12), rel=1e-6)  # no threshold


def test_the_fitted_head_knows_its_floor_and_reports_lower_bounds_below_it_as_zero(fitted_from_error):
    head = fitted_from_error.head_
    assert float(head.error_log_floor) == pytest.approx(np.log(error_floor(0.1)), rel=1e-6)
    features, _ = graded_set(50, seed=4)
    pooled = pooled_vectors(head, features)
    with torch.no_grad():
        head.error_log_floor.fill_(float(head.readout_log_error(*pooled)[:, 0].max()) + 1.0)  # all at the floor
        bounds = predicted_errors(head, pooled)
    assert np.all(bounds[:, 0] == 0) and np.all(bounds[:, 2] > bounds[:, 1])
    # an error below the floor is then inside its interval
    assert interval_coverage(bounds, np.full(len(bounds), 1e-9)) == 1.0


def test_the_fitted_head_knows_the_largest_error_and_cell_it_was_trained_on(fitted_from_error):
    head, split = fitted_from_error.head_, fitted_from_error.split_
    features, errors = graded_set(300, seed=0)  # what the fixture trained on
    assert float(head.error_log_ceiling) == pytest.approx(np.log(errors[split.train].max()), rel=1e-6)
    assert float(head.error_width_max_atoms) == max(len(features[i]) for i in split.train)
