"""Slingshot: fine-tune small models that beat big ones on your own task."""

__version__ = "0.1.0"
