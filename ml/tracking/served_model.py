"""The served model's code file (MLflow models-from-code).

``mlflow.pyfunc.log_model(python_model=<this file>, ...)`` (see
:func:`ml.tracking.serving.serving_model_spec`) copies this file into the model and runs it when
the model is logged and each time it is loaded: it builds a stateless
:class:`ml.tracking.serving.SnapshotEnsembleClassifier` (weights and meta come from the model's
artifacts in ``load_context``) and hands it to MLflow. ``ml/`` travels with the model as a
``code_paths`` entry, so the import below works where skinflow is not installed.

Nothing imports this module: importing it would set the process's pending MLflow model.
"""

from mlflow.models import set_model

from ml.tracking.serving import SnapshotEnsembleClassifier

set_model(SnapshotEnsembleClassifier())
