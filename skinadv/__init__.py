"""skinadv: adversarial attacks and defences for skin-lesion classification."""

__version__ = "0.1.0"
