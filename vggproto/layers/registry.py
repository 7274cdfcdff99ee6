"""The one registry mapping a Caffe layer type string to the class that builds it.

Every layer module decorates its classes with ``@register("Type")``; :func:`build_layer` looks the type up.  The
layer modules are found by walking this package (:mod:`pkgutil`), so a new module needs no list; every module is
imported, and one that fails to import is an error, never skipped.  Registering a type twice is a programming
error; an unknown type is a user error naming the layer and listing what is supported.  The layer contract is
:mod:`vggproto.layers.base`'s.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from typing import Callable

from vggproto.layers.base import CaffeLayer, LayerSpec

_REGISTRY: dict[str, type[CaffeLayer]] = {}


def register(type_name: str) -> Callable[[type[CaffeLayer]], type[CaffeLayer]]:
    """Class decorator: make ``cls`` the builder of Caffe layers of ``type_name``."""
    def decorate(cls: type[CaffeLayer]) -> type[CaffeLayer]:
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type '{type_name}' registered twice "
                               f"({_REGISTRY[type_name].__module__} and {cls.__module__})")
        _REGISTRY[type_name] = cls
        return cls
    return decorate


def layer_modules() -> list[str]:
    """Every module of the :mod:`vggproto.layers` package, by name (the ones that register types among them)."""
    # the package is loaded before any of its modules: its folders are read here, its __init__ is not imported
    package = sys.modules[__package__]
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__, f"{__package__}."))


def _load_layer_modules() -> None:
    """Import every layer module once (on first use, so that importing the registry stays cheap); an import
    error propagates, so a broken module is never a silently missing layer type."""
    for name in layer_modules():
        importlib.import_module(name)


def registered() -> dict[str, type[CaffeLayer]]:
    """Every registered Caffe layer type and its class (a copy), for code that reads the classes' facts."""
    _load_layer_modules()
    return dict(sorted(_REGISTRY.items()))


def supported_types() -> list[str]:
    """Every registered Caffe layer type, sorted."""
    _load_layer_modules()
    return sorted(_REGISTRY)


def layer_class(spec: LayerSpec) -> type[CaffeLayer]:
    """The class registered for ``spec.type``; a NetError listing the supported types if there is none."""
    _load_layer_modules()
    cls = _REGISTRY.get(spec.type)
    if cls is None:
        if spec.type == "WindowData":
            hint = f"'{spec.type}' layers are not supported by vggproto. "
        else:
            close = difflib.get_close_matches(spec.type.lower(), [t.lower() for t in _REGISTRY], n=1, cutoff=0.7)
            match = [t for t in _REGISTRY if close and t.lower() == close[0]]
            hint = f"unknown layer type '{spec.type}'" + (f"; did you mean {match[0]}? " if match else ". ")
        raise spec.error(hint + "Supported types: " + ", ".join(sorted(_REGISTRY)))
    return cls


def build_layer(spec: LayerSpec) -> CaffeLayer:
    """Build the layer described by ``spec``."""
    return layer_class(spec)(spec)
