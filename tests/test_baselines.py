"""Tests for probe_md.baselines: ensemble disagreement and feature density."""

import io

import numpy as np
import pytest
import torch

from probe_md.backbone.base import StructurePrediction
from probe_md.baselines import (
    ENERGY_STD_PER_ATOM,
    FORCE_STD_MAX,
    FORCE_STD_MEAN,
    FeatureDensity,
    ensemble_disagreement,
)
from probe_md.estimator import NotFittedError


def _prediction(energy, forces, num_features=4):
    forces = np.asarray(forces, dtype=np.float64)
    return StructurePrediction(energy=energy, forces=forces, features=np.zeros((len(forces), num_features)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- ensemble disagreement


def test_identical_members_disagree_zero(rng):
    member = [_prediction(float(rng.normal()), rng.normal(size=(n, 3))) for n in (3, 5)]
    out = ensemble_disagreement([member, member, member])
    for key in (ENERGY_STD_PER_ATOM, FORCE_STD_MEAN, FORCE_STD_MAX):
        assert out[key].shape == (2,)
        np.testing.assert_allclose(out[key], 0.0, atol=1e-15, err_msg=key)


def test_two_members_by_hand():
    # 2 atoms; energies -4 and -2 eV -> per atom -2 and -1 -> population std 0.5 eV/atom
    # atom 0: forces differ by (2, 0, 0) -> var 1 in x -> std 1
    # atom 1: forces differ by (0, 6, 8) -> var 9 + 16 -> std 5
    member_a = [_prediction(-4.0, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])]
    member_b = [_prediction(-2.0, [[-1.0, 0.0, 0.0], [0.0, 6.0, 8.0]])]
    out = ensemble_disagreement([member_a, member_b])
    np.testing.assert_allclose(out[ENERGY_STD_PER_ATOM], [0.5])
    np.testing.assert_allclose(out[FORCE_STD_MEAN], [3.0])
    np.testing.assert_allclose(out[FORCE_STD_MAX], [5.0])


def test_disagreement_rejects_single_member():
    with pytest.raises(ValueError, match="at least 2 members"):
        ensemble_disagreement([[_prediction(0.0, [[0, 0, 0]])]])


def test_disagreement_rejects_different_structure_counts():
    one = [_prediction(0.0, [[0, 0, 0]])]
    with pytest.raises(ValueError, match="member 1 predicted 2 structures"):
        ensemble_disagreement([one, one * 2])


def test_disagreement_rejects_mismatched_atom_counts():
    with pytest.raises(ValueError, match="structure 0: member 1 forces have shape"):
        ensemble_disagreement([[_prediction(0.0, [[0, 0, 0]])], [_prediction(0.0, [[0, 0, 0], [1, 1, 1]])]])


# ----------------------------------------------------------------------------- feature density


@pytest.fixture
def train_features(rng):
    # anisotropic Gaussian features split into structures of varying size
    scales = np.array([3.0, 1.0, 0.5, 0.1])
    atoms = rng.normal(size=(400, 4)) * scales + np.array([1.0, -2.0, 0.0, 5.0])
    return np.split(atoms, [10, 50, 120, 260])


def test_not_fitted_error():
    with pytest.raises(NotFittedError, match="not fitted yet"):
        FeatureDensity().score([np.zeros((2, 4))])


def test_mean_scores_lowest_and_grows_with_distance(train_features):
    density = FeatureDensity().fit(train_features)
    direction = np.array([1.0, 1.0, 1.0, 1.0])
    probes = [density.mean_ + t * direction for t in (0.0, 0.5, 1.0, 2.0, 4.0)]
    scores = density.score([probe[None, :] for probe in probes])
    assert scores[0] == pytest.approx(0.0, abs=1e-9)
    assert np.all(np.diff(scores) > 0)


def test_distance_follows_covariance_not_euclid(train_features):
    # the same Euclidean step is far more unusual along the narrow (0.1) axis than the wide (3.0) one
    density = FeatureDensity().fit(train_features)
    wide = density.mean_ + np.array([1.0, 0, 0, 0])
    narrow = density.mean_ + np.array([0, 0, 0, 1.0])
    wide_score, narrow_score = density.score([wide[None], narrow[None]])
    assert narrow_score > 5 * wide_score


def test_max_and_mean_aggregation(train_features):
    density_max = FeatureDensity(aggregate="max").fit(train_features)
    density_mean = FeatureDensity(aggregate="mean").fit(train_features)
    structure = np.stack([density_max.mean_, density_max.mean_ + np.array([0, 0, 0, 1.0])])
    distances = density_max.atom_distances(structure)
    assert density_max.score([structure])[0] == pytest.approx(distances.max())
    assert density_mean.score([structure])[0] == pytest.approx(distances.mean())
    assert distances.max() > distances.mean()


def test_ledoit_wolf_shrinkage_adapts_to_data(rng):
    isotropic = rng.normal(size=(30, 20))  # few samples, identity covariance: shrink a lot
    anisotropic = rng.normal(size=(5000, 3)) * np.array([10.0, 1.0, 0.1])  # many samples: barely
    assert FeatureDensity().fit([isotropic]).shrinkage_ > 0.5
    assert FeatureDensity().fit([anisotropic]).shrinkage_ < 0.01


def test_fewer_atoms_than_features_stays_finite(rng):
    density = FeatureDensity().fit([rng.normal(size=(5, 32))])
    assert np.all(np.isfinite(density.score([rng.normal(size=(3, 32))])))


def test_fixed_shrinkage_one_is_scaled_euclid(train_features):
    density = FeatureDensity(shrinkage=1.0).fit(train_features)
    variance = np.trace(np.cov(np.concatenate(train_features).T, bias=True)) / 4
    probe = density.mean_ + np.array([0.0, 3.0, 0.0, 4.0])
    assert density.score([probe[None]])[0] == pytest.approx(5.0 / np.sqrt(variance), rel=1e-6)


def test_feature_dim_mismatch_rejected(train_features):
    density = FeatureDensity().fit(train_features)
    with pytest.raises(ValueError, match=r"features_per_structure\[0\] has shape \(2, 3\)"):
        density.score([np.zeros((2, 3))])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"aggregate": "median"}, "aggregate must be one of"), ({"shrinkage": 1.5}, "shrinkage must be")],
)
def test_bad_hyperparameters_rejected_at_fit(kwargs, match, train_features):
    with pytest.raises(ValueError, match=match):
        FeatureDensity(**kwargs).fit(train_features)


def test_state_dict_round_trip_weights_only(train_features, rng):
    density = FeatureDensity(aggregate="mean").fit(train_features)
    buffer = io.BytesIO()
    torch.save({"feature_density": density.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["feature_density"]
    restored = FeatureDensity.from_state_dict(loaded)
    assert restored.aggregate == "mean"
    queries = [rng.normal(size=(n, 4)) * 2 for n in (1, 7)]
    np.testing.assert_allclose(restored.score(queries), density.score(queries), rtol=1e-12)


def test_from_state_dict_names_missing_field(train_features):
    state = FeatureDensity().fit(train_features).state_dict()
    del state["precision"]
    with pytest.raises(ValueError, match=r"missing \['precision'\]"):
        FeatureDensity.from_state_dict(state)
