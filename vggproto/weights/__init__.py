"""Weight files, numpy only: the protobuf wire codec (:mod:`.wire`), BlobProto arrays (:mod:`.blob`),
zero-copy caffemodel reading and writing (:mod:`.caffemodel`), Caffe HDF5 (:mod:`.hdf5`), PyTorch/safetensors
state dicts (:mod:`.torch_files`; torch is imported only inside the .pt functions), the torchvision VGG name and
input mapping (:mod:`.torchvision`) and Caffe's shape rule for loading an array into a blob (:mod:`.fit`).

May import: :mod:`vggproto.errors`, :mod:`vggproto.caffe`, :mod:`vggproto.vgg`.  Importing it never imports torch.
"""
from vggproto.weights.caffemodel import Weights, read_caffemodel, read_weights, upgrade_caffemodel, write_weights  # noqa: F401

__all__ = ["Weights", "read_caffemodel", "read_weights", "upgrade_caffemodel", "write_weights"]
