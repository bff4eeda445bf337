"""MLflow *models from code* entry of the κ ensemble pyfunc (no pickled Python objects).

``mlflow.pyfunc.log_model(python_model=<this file>)`` stores this file with the model; loading
the model executes it, and ``set_model`` hands MLflow the :class:`KappaEnsembleModel` whose
``load_context`` reads the weights (``torch.load(weights_only=True)``).
"""

from mlflow.models import set_model

from kappaflow.registry.pyfunc import KappaEnsembleModel

set_model(KappaEnsembleModel())
