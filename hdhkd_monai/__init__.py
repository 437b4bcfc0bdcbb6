"""HDHKD: Hybrid Dual-Heterogeneous Knowledge Distillation for unsupervised medical anomaly detection, on MONAI.

May import every layer of the library (it is the top one); never ``tools``, ``experiments`` or ``bench``.
"""

__version__ = "0.1.0"
