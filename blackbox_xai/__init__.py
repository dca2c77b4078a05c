"""blackbox-xai: explain what an exported ONNX model looks at, with no training framework."""

from .api import explain
from .explanation import Explanation
from .model import Model, load_model
from .registry import METHODS, all_methods

__version__ = "0.1.0"

__all__ = ["METHODS", "Explanation", "Model", "all_methods", "explain", "load_model"]
