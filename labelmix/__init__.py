"""labelmix: which mix of annotation types buys the best segmentation for a given budget."""

__version__ = "0.1.0"
