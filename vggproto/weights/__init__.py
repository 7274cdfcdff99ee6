"""Weight files, numpy only: BlobProto arrays (:mod:`.blob`), zero-copy caffemodel reading and writing
(:mod:`.caffemodel`), Caffe HDF5 (:mod:`.hdf5`), PyTorch/safetensors state dicts (:mod:`.torch_files`; torch is
imported only inside the .pt functions), the torchvision VGG name and input mapping (:mod:`.torchvision`),
Caffe's rule for loading arrays into a net's blobs (:mod:`.fit`, with the one ``Weights`` type) and what
``upgrade``/``info`` do to a file (:mod:`.files`).

May import: :mod:`vggproto.errors`, :mod:`vggproto.caffe`, :mod:`vggproto.vgg`.  Importing it never imports torch.
"""
from vggproto.weights.caffemodel import read_caffemodel, read_weights, upgrade_caffemodel, write_weights
from vggproto.weights.fit import Weights, fit_blob, fit_to_net

__all__ = ["Weights", "fit_blob", "fit_to_net", "read_caffemodel", "read_weights", "upgrade_caffemodel",
           "write_weights"]
