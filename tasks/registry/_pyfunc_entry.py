"""MLflow models-from-code entry point: logged as the model's code, so nothing is pickled."""

from mlflow.models import set_model

from tasks.registry.serving import ImageClassifier

set_model(ImageClassifier())
