"""autolabel: training-free object discovery on self-supervised ViT features, for pre-labelling images."""

__version__ = "0.1.0"
