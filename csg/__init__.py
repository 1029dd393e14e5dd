"""csg-ray: the Class-Specific Gate (Liang et al., ECCV 2020) on any classifier, at scale.

The Python API (docs/python-api.md): `attach` a gate point to a model, hold G in a
`ClassSpecificGate`, and add `sparsity_loss` to the CSG path's loss."""
from csg.method.attach import GatedModel, attach
from csg.method.gate import ClassSpecificGate, sparsity_loss

__all__ = ["ClassSpecificGate", "GatedModel", "attach", "sparsity_loss"]
