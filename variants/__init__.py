"""Attention variants: one module per block, each registering itself by name.

Importing this package imports every module in it, so a new variant is added by
dropping ``variants/<name>.py`` with an ``@register("<name>")`` class; nothing else
needs editing (its ``variant=<name>`` config is derived from the registry).
"""

import importlib
import pkgutil

from variants.registry import (AttentionBlock, NoOptions, available_variants, get_variant, register,
                               resolve, unregister)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["AttentionBlock", "NoOptions", "available_variants", "get_variant", "register", "resolve",
           "unregister"]
