"""dakd: Domain Adaptive Knowledge Distillation for semantic segmentation.

The library behind the `dakd` CLI and the Kubeflow components. It never imports kfp.
"""

__version__ = "0.1.0"
