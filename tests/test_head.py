import numpy as np
import torch

from probe_md.head import (
    FORCE_NORM_OFFSET,
    HeadConfig,
    NORMAL_Z90,
    ProbeHead,
    atom_importance,
    finish_pool,
    force_norm_column,
    merge_partial_pools,
    partial_pool,
    piecewise_linear,
)


def _head(seed=0, dim=6):
    torch.manual_seed(seed)
    return ProbeHead(HeadConfig(feature_dim=dim, num_heads=3, value_dim=4, dropout=0.0)).eval()


def test_partial_sums_merged_equal_direct_pooling():
    head = _head()
    features = torch.randn(30, 6) * 3
    batch = torch.tensor([0] * 12 + [1] * 18)
    scores, values = head.atom_terms(features)
    direct = finish_pool(partial_pool(scores, values, batch, 2))
    # Split the atoms over three "ranks" arbitrarily, including a part without structure 0.
    parts = [torch.arange(0, 7), torch.arange(7, 20), torch.arange(20, 30)]
    merged = None
    for idx in parts:
        pool = partial_pool(scores[idx], values[idx], batch[idx], 2)
        merged = pool if merged is None else merge_partial_pools(merged, pool)
    torch.testing.assert_close(finish_pool(merged), direct, rtol=1e-6, atol=1e-6)


def test_permutation_invariance_and_permuted_attention():
    head = _head(1)
    features = torch.randn(11, 6)
    batch = torch.zeros(11, dtype=torch.long)
    permutation = torch.randperm(11)
    out = head(features, batch, 1)
    out_perm = head(features[permutation], batch, 1)
    torch.testing.assert_close(out.logits, out_perm.logits)
    torch.testing.assert_close(out.attention[permutation], out_perm.attention)


def test_attention_sums_to_one_per_structure_and_head():
    head = _head(2)
    features = torch.randn(9, 6)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1])
    attention = head(features, batch, 2).attention
    sums = torch.zeros(2, 3).index_add(0, batch, attention)
    torch.testing.assert_close(sums, torch.ones(2, 3))
    assert abs(float(atom_importance(attention[:4]).mean()) - 1.0) < 1e-6


def test_calibration_buffers_change_logit():
    head = _head(3)
    features = torch.randn(5, 6)
    batch = torch.zeros(5, dtype=torch.long)
    raw = head(features, batch, 1, calibrated=False).logits
    head.temperature.fill_(2.0)
    head.logit_bias.fill_(0.5)
    torch.testing.assert_close(head(features, batch, 1).logits, (raw + 0.5) / 2.0)


def test_head_scripts_and_matches_eager():
    head = _head(4)
    scripted = torch.jit.script(head)
    features = torch.randn(8, 6)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    torch.testing.assert_close(scripted(features, batch, 2).logits, head(features, batch, 2).logits)


def test_isotonic_knots_map_the_calibrated_logit_and_script():
    head = _head(4)
    features = torch.randn(8, 6)
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    plain = head(features, batch, 2).logits
    head.calibration_knots_x = torch.tensor([-10.0, 0.0, 10.0])
    head.calibration_knots_y = torch.tensor([-1.0, 0.5, 2.0])
    expected = 0.5 + 0.15 * plain  # both segments have slope 0.15
    torch.testing.assert_close(head(features, batch, 2).logits, expected)
    scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(features, batch, 2).logits, expected)
    far = piecewise_linear(torch.tensor([-50.0, 50.0]), head.calibration_knots_x, head.calibration_knots_y)
    torch.testing.assert_close(far, torch.tensor([-1.0, 2.0]))  # constant beyond the end knots


def test_predicted_error_is_ordered_and_nan_until_fitted():
    head = _head(5)
    out = head(torch.randn(6, 6), torch.zeros(6, dtype=torch.long), 1)
    pooled, counts = out.pooled, out.atom_counts
    assert counts.tolist() == [6.0]
    assert torch.isnan(head.readout_error(pooled, counts)).all()
    head.error_fitted.fill_(1.0)
    head.error_interval_offset.fill_(-5.0)  # a narrowing offset never crosses the median
    lower, median, upper = head.readout_error(pooled, counts)[0]
    assert lower == median == upper
    head.error_interval_offset.fill_(0.5)
    lower, median, upper = head.readout_error(pooled, counts)[0]
    assert lower < median < upper
    with torch.no_grad():
        head.error_width_size_exponent.fill_(0.5)  # 4x the atoms: half the log-width
        _, median, upper = head.readout_error(pooled, counts)[0]
        _, big_median, big_upper = head.readout_error(pooled, counts * 4)[0]
    torch.testing.assert_close(big_median, median)
    torch.testing.assert_close(torch.log(big_upper / big_median), 0.5 * torch.log(upper / median))


def test_a_head_reading_its_logit_from_the_error_uses_the_margin_below_the_threshold():
    head = _head(6)
    features, batch = torch.randn(9, 6), torch.zeros(9, dtype=torch.long)
    classifier_logit = head(features, batch, 1, calibrated=False).logits
    head.logit_from_error.fill_(1.0)
    head.log_threshold.fill_(-3.0)
    out = head(features, batch, 1, calibrated=False)
    lower, median, upper = head.readout_log_error(out.pooled, out.atom_counts, widened=False)[0]
    half_width = (median - lower) if median > -3.0 else (upper - median)
    torch.testing.assert_close(out.logits[0], (-3.0 - median) * NORMAL_Z90 / half_width)
    assert not torch.allclose(out.logits, classifier_logit)
    # a lower threshold can only lower the logit, and the scripted head agrees
    head.log_threshold.fill_(-4.0)
    assert head(features, batch, 1, calibrated=False).logits[0] < out.logits[0]
    scripted = torch.jit.script(head)
    torch.testing.assert_close(scripted(features, batch, 1).logits, head(features, batch, 1).logits)


def test_force_norm_column_and_inputs():
    forces = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    column = force_norm_column(forces)
    np.testing.assert_allclose(column.squeeze(1).numpy(), np.log([5.0 + FORCE_NORM_OFFSET, FORCE_NORM_OFFSET]))
    features = torch.randn(2, 4, dtype=torch.float64)
    reading = ProbeHead(HeadConfig(feature_dim=5, reads_force_norm=True)).double()
    assert reading.config.backbone_feature_dim == 4
    torch.testing.assert_close(reading.inputs(features, forces), torch.cat([features, column], dim=1))
    scripted = torch.jit.script(reading)
    torch.testing.assert_close(scripted.inputs(features, forces), torch.cat([features, column], dim=1))
    plain = ProbeHead(HeadConfig(feature_dim=4))
    assert plain.inputs(features, forces) is features and plain.config.backbone_feature_dim == 4


def test_a_lower_bound_at_the_error_floor_reaches_zero():
    """The readout predicts quantiles of max(error, floor): a lower bound at or below the floor
    covers every error below it (forces vanishing by symmetry), so it is reported as 0."""
    torch.manual_seed(0)
    head = ProbeHead(HeadConfig(feature_dim=3, num_heads=1, value_dim=2)).eval()
    head.error_fitted.fill_(1.0)
    pooled, counts = torch.randn(6, 2), torch.full((6,), 64.0)
    with torch.no_grad():
        log_bounds = head.readout_log_error(pooled, counts)
        assert torch.all(head.readout_error(pooled, counts)[:, 0] > 0)  # no floor (old heads): as before
        head.error_log_floor.fill_(float(log_bounds[:, 0].median()))
        error = head.readout_error(pooled, counts)
    at_floor = log_bounds[:, 0] <= head.error_log_floor
    assert 0 < int(at_floor.sum()) < 6
    assert torch.all(error[at_floor, 0] == 0) and torch.all(error[~at_floor, 0] == torch.exp(log_bounds[~at_floor, 0]))
    torch.testing.assert_close(error[:, 1:], torch.exp(log_bounds[:, 1:]))


def test_errors_beyond_the_largest_training_error_are_reported_as_unbounded(tmp_path):
    """Past the ceiling the readout extrapolates linearly: the median and lower bound stop at
    it, the upper bound is +inf, and the logit is untouched; the scripted head agrees."""
    torch.manual_seed(1)
    head = ProbeHead(HeadConfig(feature_dim=3, num_heads=1, value_dim=2)).eval()
    head.error_fitted.fill_(1.0)
    head.logit_from_error.fill_(1.0)
    pooled, counts = torch.randn(8, 2) * 3, torch.full((8,), 64.0)
    with torch.no_grad():
        log_bounds = head.readout_log_error(pooled, counts)
        unclamped = head.readout_error(pooled, counts)  # no ceiling (old heads): as before
        logits = head.readout_logit(pooled, counts)
        head.error_log_ceiling.fill_(float(log_bounds[:, 1].median()))
        error = head.readout_error(pooled, counts)
    torch.testing.assert_close(unclamped, torch.exp(log_bounds))
    ceiling = float(head.error_log_ceiling)
    beyond = log_bounds[:, 2] > ceiling
    assert 0 < int((log_bounds[:, 1] > ceiling).sum()) < 8
    assert torch.all(torch.isinf(error[beyond, 2])) and torch.all(torch.isfinite(error[~beyond]))
    torch.testing.assert_close(error[:, :2], torch.exp(torch.clamp(log_bounds[:, :2], max=ceiling)))
    torch.testing.assert_close(head.readout_logit(pooled, counts), logits)
    path = tmp_path / "readout.pt"
    torch.jit.save(torch.jit.script(_ErrorReadout(head)), path)
    torch.testing.assert_close(torch.jit.load(path)(pooled, counts), error)


def test_the_intervals_size_law_stops_at_the_largest_training_cell_and_the_logits_does_not():
    torch.manual_seed(2)
    head = ProbeHead(HeadConfig(feature_dim=3, num_heads=1, value_dim=2)).eval()
    head.error_fitted.fill_(1.0)
    head.logit_from_error.fill_(1.0)
    head.log_threshold.fill_(-3.0)
    pooled = torch.randn(1, 2).repeat(3, 1)
    counts = torch.tensor([64.0, 128.0, 512.0])
    with torch.no_grad():
        head.error_width_size_exponent.fill_(0.5)
        unlimited = head.readout_log_error(pooled, counts)  # no largest cell (old heads)
        logits = head.readout_logit(pooled, counts)
        head.error_width_max_atoms.fill_(128.0)
        log_bounds = head.readout_log_error(pooled, counts)
        torch.testing.assert_close(head.readout_logit(pooled, counts), logits)
    width = log_bounds[:, 2] - log_bounds[:, 0]
    torch.testing.assert_close(log_bounds[:2], unlimited[:2])
    torch.testing.assert_close(width[2], width[1])  # 512 atoms: the 128-atom width
    assert width[2] > unlimited[2, 2] - unlimited[2, 0]
    assert logits[2].abs() > logits[1].abs()  # the logit's spread keeps shrinking: sharper


class _ErrorReadout(torch.nn.Module):
    """readout_error as a scripted module's forward (the fused export calls it the same way)."""

    def __init__(self, head: ProbeHead):
        super().__init__()
        self.head = head

    def forward(self, pooled: torch.Tensor, atom_counts: torch.Tensor) -> torch.Tensor:
        return self.head.readout_error(pooled, atom_counts)
