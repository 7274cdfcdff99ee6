"""Layer builders, one small class per Caffe type, registered in :mod:`vggproto.layers.registry`."""
