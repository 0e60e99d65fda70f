"""maskcontrast: unsupervised semantic segmentation by contrasting object mask proposals."""

__version__ = "0.1.0"
