"""Built-in methods; importing a module registers its methods (one line per module)."""

from . import lime, meaningful_perturbation, occlusion, rise, shapley  # noqa: F401
from . import cam, gradients  # noqa: F401
