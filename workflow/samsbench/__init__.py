"""samsbench: the SAMS-VAE paper's benchmark of perturbation models, end to end."""

__version__ = "0.1.0"
