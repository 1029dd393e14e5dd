"""csg-ray: the Class-Specific Gate (Liang et al., ECCV 2020) on any classifier, at scale."""
from csg.method.attach import GatedModel, attach

__all__ = ["GatedModel", "attach"]
