"""The interpreter: :class:`Net` runs any (upgraded) Caffe net in PyTorch with Caffe's semantics
(:mod:`.interpreter`), loads and shares weights by Caffe's rules (:mod:`.weights`, the one load path), builds nets
on the meta device for shapes (:mod:`.shapes`, the one such build), makes fully-convolutional nets (:mod:`.dense`),
prints Caffe's debug_info (:mod:`.debug`) and per-layer timings (:mod:`.timing`), and parses ``--gpus`` into
the devices a command runs on (:mod:`.devices`).

May import: everything below it (errors, caffe, vgg, weights, data, layers).  Never training, evaluation or
conversion code.
"""
from vggproto.net.interpreter import Net  # noqa: F401
from vggproto.net.table import shape_table  # noqa: F401

__all__ = ["Net", "shape_table"]
