"""vesselctl: fine-tune, run and measure text-promptable segmentation models on vessel images."""

__version__ = "0.1.0"
