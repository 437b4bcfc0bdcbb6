"""HDHKD: Hybrid Dual-Heterogeneous Knowledge Distillation for unsupervised medical anomaly detection, on MONAI."""

__version__ = "0.1.0"
