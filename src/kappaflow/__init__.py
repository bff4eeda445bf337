from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _v

try:
    __version__ = _v("kappaflow")
except PackageNotFoundError:  # imported from source (e.g. an MLflow model's code_paths copy)
    __version__ = "0+unknown"
