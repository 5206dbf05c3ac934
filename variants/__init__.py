"""Attention variants: one module per block, each registering itself by name.

Importing this package imports every module in it, so a new variant is added by
dropping ``variants/<name>.py`` with an ``@register("<name>")`` class; nothing else
needs editing (its ``variant=<name>`` config is derived from the registry).
"""

import importlib
import pkgutil
import warnings

from variants.registry import (AttentionBlock, NoOptions, available_variants, get_variant, register,
                               resolve, unregister, unregistered_blocks)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        for _block in unregistered_blocks(importlib.import_module(f"{__name__}.{_module.name}")):
            # Else the only sign is Hydra's "Could not find 'variant/<name>'" at variant=<name>.
            warnings.warn(f"variants/{_module.name}.py defines {_block.__qualname__}, an AttentionBlock that is "
                          f"not registered, so no variant= chooses it: put @register(\"<name>\") above it "
                          f"(a base class meant only to be subclassed: start its name with _)", stacklevel=1)

__all__ = ["AttentionBlock", "NoOptions", "available_variants", "get_variant", "register", "resolve",
           "unregister"]
