import numpy as np
import pytest
import torch

from probe_md.estimator import NotFittedError
from probe_md.metrics import auroc
from probe_md.training import (
    HeadInfo,
    ProbeClassifier,
    TrainingConfig,
    load_head,
    save_head,
)


def separable_set(n: int, seed: int, dim: int = 8):
    """Unreliable structures contain a few atoms from a shifted feature distribution."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for _ in range(n):
        atoms = rng.normal(size=(int(rng.integers(8, 30)), dim))
        reliable = rng.random() < 0.6
        if not reliable:
            k = int(rng.integers(1, 4))
            atoms[:k, :2] += 3.0
        features.append(atoms)
        labels.append(reliable)
    return features, np.array(labels)


@pytest.fixture(scope="module")
def fitted():
    features, labels = separable_set(300, seed=0)
    config = TrainingConfig(max_epochs=80, patience=15, seed=0)
    return ProbeClassifier({"hidden_dim": 32}, config, verbose=False).fit(features, labels)


def test_separable_case_reaches_high_auroc(fitted):
    features, labels = separable_set(200, seed=1)
    proba = fitted.predict_proba(features)
    assert proba.shape == (200, 2) and fitted.classes_.tolist() == [False, True]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert auroc(proba[:, 0], ~labels) > 0.95  # column 0: P(unreliable)


def test_attention_finds_the_anomalous_atoms(fitted):
    features, labels = separable_set(60, seed=2)
    attention = fitted.attention(features)
    hits = [a.mean(1).argmax() < 3 for a, ok in zip(attention, labels) if not ok]
    assert np.mean(hits) > 0.8


def test_save_load_round_trip_weights_only(fitted, tmp_path):
    info = HeadInfo(criterion="force-rmse", threshold=0.1, backbone_fingerprint="abc")
    path = tmp_path / "head.pt"
    save_head(fitted.head_, info, path)
    torch.load(path, weights_only=True)  # must not need unpickling of custom classes
    head, loaded_info = load_head(path)
    features, _ = separable_set(10, seed=3)
    np.testing.assert_allclose(
        ProbeClassifier.from_head(head).predict_proba(features), fitted.predict_proba(features), rtol=1e-6
    )
    assert loaded_info.threshold == 0.1 and loaded_info.backbone_fingerprint == "abc"


def test_head_files_with_the_old_temperature_copy_still_load(fitted, tmp_path):
    path = tmp_path / "old_head.pt"
    save_head(fitted.head_, HeadInfo(criterion="force-rmse", threshold=0.1, backbone_fingerprint="abc"), path)
    payload = torch.load(path, weights_only=True)
    assert "temperature" not in payload  # the weights hold it (the `temperature` buffer)
    payload["temperature"] = 99.0  # what earlier versions wrote next to the weights
    torch.save(payload, path)
    head, _ = load_head(path)
    assert float(head.temperature) == pytest.approx(float(fitted.head_.temperature))


def test_head_files_from_before_the_force_norm_and_the_error_floor_load_as_they_were(fitted, tmp_path):
    path = tmp_path / "old_head.pt"
    save_head(fitted.head_, HeadInfo(criterion="force-rmse", threshold=0.1, backbone_fingerprint="abc"), path)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["reads_force_norm"], payload["state_dict"]["error_log_floor"]  # what older files lack
    torch.save(payload, path)
    head, _ = load_head(path)
    assert not head.reads_force_norm and head.config.backbone_feature_dim == head.config.feature_dim
    assert float(head.error_log_floor) == float("-inf")  # no floor: lower bounds as before


def test_unfitted_and_one_class_errors():
    with pytest.raises(NotFittedError, match="not fitted"):
        ProbeClassifier().predict_proba([np.zeros((3, 2))])
    with pytest.raises(ValueError, match="same label"):
        ProbeClassifier(verbose=False).fit([np.zeros((3, 2))] * 4, np.ones(4, dtype=bool))


def test_bad_head_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_head(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="corrupt"):
        load_head(corrupt)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a PROBE head"):
        load_head(other)


def test_empty_or_truncated_head_file_says_so_in_one_line(fitted, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"head file .*empty.pt is empty: re-run `probe-md train`"):
        load_head(empty)
    whole = tmp_path / "head.pt"
    save_head(fitted.head_, HeadInfo(criterion="force-rmse", threshold=0.1, backbone_fingerprint="abc"), whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.pt is truncated.*re-run `probe-md train`") as caught:
        load_head(truncated)
    assert "\n" not in str(caught.value)


def test_too_few_structures_name_the_empty_split_and_the_count_needed():
    features = [np.zeros((3, 2))] * 6
    labels = np.array([True, True, True, True, False, False])  # 0.15 of 2 rounds to 0
    with pytest.raises(ValueError, match=r"2 unreliable structures leave the validation and calibration "
                                         r"split\(s\) without any: .* at least 4 structures"):
        ProbeClassifier(verbose=False).fit(features, labels)
