"""Layer builders, one small class per Caffe type (BVLC's and the forks'), registered in
:mod:`vggproto.layers.registry`.

``register`` and ``CaffeLayer`` are here for plugins: a private fork's layer type is a subclass of
:class:`CaffeLayer` decorated with ``@register("TypeName")`` (its parameters, if the fork added a message for
them, are registered with :func:`vggproto.caffe.plugins.register_param`; ``docs/notes/forks.md`` has a worked
example).
"""
from vggproto.layers.registry import CaffeLayer, LayerSpec, register  # noqa: F401

__all__ = ["CaffeLayer", "LayerSpec", "register"]
