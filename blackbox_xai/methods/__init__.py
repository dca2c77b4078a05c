"""Built-in methods; importing a module registers its methods (one line per module)."""

from . import occlusion  # noqa: F401
