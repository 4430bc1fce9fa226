"""organseg: semi-supervised two-stage segmentation of abdominal organs at risk in CT."""

__version__ = "0.1.0"
