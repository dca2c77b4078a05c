"""blackbox-xai: explain what an exported ONNX model looks at, with no training framework."""

from ._version import __version__
from .api import explain
from .explanation import Explanation
from .methods import METHODS, all_methods
from .model import Model, load_model
from .targets import Detection, Region

__all__ = ["METHODS", "Detection", "Explanation", "Model", "Region", "__version__", "all_methods",
           "explain", "load_model"]
