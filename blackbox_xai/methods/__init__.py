"""Built-in methods; importing a module registers its methods (one line per module)."""

from . import cam, gradients, lime, meaningful_perturbation, occlusion, rise, shapley  # noqa: F401
