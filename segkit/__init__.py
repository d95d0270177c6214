"""segkit: semantic segmentation models, data, training and deployment for PyTorch."""

from segkit.checkpoint import load_model
from segkit.convert import convert_checkpoint
from segkit.deploy.onnx import export
from segkit.deploy.optimize import optimize_for_inference
from segkit.models import create_model, list_backbones, list_models
from segkit.predictor import Prediction, Predictor
from segkit.weights import LoadReport, load_weights

__version__ = "0.1.0"

__all__ = [
    "LoadReport",
    "Prediction",
    "Predictor",
    "__version__",
    "convert_checkpoint",
    "create_model",
    "export",
    "list_backbones",
    "list_models",
    "load_model",
    "load_weights",
    "optimize_for_inference",
]
