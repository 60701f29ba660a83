"""MLflow models-from-code entry point: logged as the model's code, so nothing is pickled."""

from mlflow.models import set_model

from tasks.serving import ImageClassifier

set_model(ImageClassifier())
