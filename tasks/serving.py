"""Compatibility entry for models registered before the layered layout.

A registered pyfunc carries its own copy of the entry file; versions logged before
``tasks/`` was split into packages import ``tasks.serving.ImageClassifier``. This alias
keeps them loading with ``mlflow.pyfunc.load_model`` (tests/integration/test_legacy_model.py).
"""

from tasks.registry.serving import ImageClassifier

__all__ = ["ImageClassifier"]
