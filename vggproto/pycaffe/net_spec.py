"""pycaffe's NetSpec: nets written as Python expressions (``n.conv1 = L.Convolution(n.data, ...)``).

The same script gives the same NetParameter as pycaffe's, hence the same prototxt text: layers appear in the
order their tops are first needed, a layer is named after the NetSpec attribute holding its first top (else
``Type<k>``), in-place layers reuse their bottoms, keyword arguments go into the layer's ``<type>_param``
(``*param`` names and unknown ones into the layer itself), lists repeat fields and dicts fill sub-messages.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from vggproto.caffe.proto import caffe_pb2


def param_name_dict() -> dict[str, str]:
    """Layer type -> its parameter field prefix (``Convolution`` -> ``convolution``), read from the schema."""
    layer = caffe_pb2.LayerParameter()
    names = [f.name for f in layer.DESCRIPTOR.fields if f.name.endswith("_param")]
    types = [type(getattr(layer, name)).__name__ for name in names]
    return {t[:-len("Parameter")]: n[:-len("_param")] for n, t in zip(names, types)}


def to_proto(*tops: "Top") -> caffe_pb2.NetParameter:
    """The NetParameter computing ``tops`` (and everything they need)."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top.fn.to_layers(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto: Any, name: str, value: Any) -> None:
    """Set field ``name`` of ``proto`` from a Python value: scalars set, lists extend, dicts recurse."""
    repeated = hasattr(getattr(proto, name), "extend")
    if repeated and not isinstance(value, list):
        value = [value]
    if isinstance(value, list):
        if value and isinstance(value[0], dict):
            for item in value:
                child = getattr(proto, name).add()
                for key, sub in item.items():
                    assign_proto(child, key, sub)
        else:
            getattr(proto, name).extend(value)
    elif isinstance(value, dict):
        for key, sub in value.items():
            assign_proto(getattr(proto, name), key, sub)
    else:
        setattr(proto, name, value)


class Top:
    """One output of a layer function (``n``-th top of ``fn``)."""

    def __init__(self, fn: "Function", n: int):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net computing this top."""
        return to_proto(self)

    def to_layers(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        self.fn.to_layers(layers, names, autonames)

    _to_proto = to_layers   # pycaffe's name, which some scripts call


class Function:
    """A layer in the making: type, input tops and keyword parameters (``ntop``, ``in_place`` consumed here)."""

    def __init__(self, type_name: str, inputs: tuple, params: dict):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(value)})")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _name(self, names: dict, autonames: Counter) -> str:
        if self not in names and self.ntop > 0:
            names[self] = self._top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    @staticmethod
    def _top_name(top: Top, names: dict, autonames: Counter) -> str:
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def to_layers(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        """Add this layer (after the layers of its inputs) to ``layers``."""
        if self in layers:
            return
        bottoms = []
        for value in self.inputs:
            value.to_layers(layers, names, autonames)
            bottoms.append(layers[value.fn].top[value.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._top_name(top, names, autonames))
        layer.name = self._name(names, autonames)
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_proto(layer, key, value)
                continue
            try:
                assign_proto(getattr(layer, _PARAM_NAMES[self.type_name] + "_param"), key, value)
            except (AttributeError, KeyError):
                assign_proto(layer, key, value)
        layers[self] = layer

    _to_proto = to_layers


class NetSpec:
    """Named tops; ``to_proto()`` writes every layer they need, named by the attribute names."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value: Top) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str) -> Top:
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value: Top) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, item: str) -> Top:
        return self.__getattr__(item)

    def __delitem__(self, name: str) -> None:
        del self.tops[name]

    def keys(self) -> list[str]:
        return list(self.tops.keys())

    def vals(self) -> list[Top]:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {value: key for key, value in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top.to_layers(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.Type(*bottoms, **params)``: one top, a tuple of ``ntop`` tops, or the Function when ``ntop=0``."""

    def __getattr__(self, name: str) -> Any:
        def layer_fn(*args: Top, **kwargs: Any) -> Any:
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        return layer_fn


class Parameters:
    """``P.Pooling.MAX``: the enum values of ``<Type>Parameter``."""

    def __getattr__(self, name: str) -> Any:
        message = getattr(caffe_pb2, name + "Parameter")

        class Param:
            def __getattr__(self, param_name: str) -> Any:
                return getattr(message, param_name)
        return Param()


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
