"""Feature preparation fitted on history and applied identically later."""

from segscope.features.prepare import FeaturePreparer

__all__ = ["FeaturePreparer"]
