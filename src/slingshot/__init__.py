"""Slingshot: fine-tune small models that beat big ones on your own task.

The Python API (see slingshot.api) is imported on first use, so `import slingshot` stays light:
    slingshot.load_recipe, slingshot.train, slingshot.load, slingshot.compare, slingshot.soup, slingshot.Run
"""

__version__ = "0.1.0"

_API = {"Run", "compare", "load", "load_recipe", "soup", "train"}


def __getattr__(name: str):
    if name in _API:
        from slingshot import api

        return getattr(api, name)
    raise AttributeError(f"module 'slingshot' has no attribute {name!r}")
