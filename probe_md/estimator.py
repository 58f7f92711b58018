"""scikit-learn estimator habits shared by ProbeClassifier and FeatureDensity: the "not fitted" error."""

from __future__ import annotations


class NotFittedError(ValueError, AttributeError):
    """Raised when an estimator is used before `fit` (the bases are scikit-learn's)."""


def check_is_fitted(estimator: object, learned_attribute: str) -> None:
    """Raise NotFittedError unless `fit` has set `learned_attribute` (trailing underscore)."""
    if not hasattr(estimator, learned_attribute):
        raise NotFittedError(f"this {type(estimator).__name__} is not fitted yet: call fit() first")
