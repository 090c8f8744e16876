"""ssl-mamba: Mamba-UNet and semi-supervised segmentation methods behind one trainer."""
__version__ = "0.1.0"
