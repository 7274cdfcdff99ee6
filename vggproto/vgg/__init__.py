"""The paper, as data and without torch: Table 1 and the training constants (:mod:`.configs`, the one
``MEAN_BGR``), the net builder (:mod:`.nets`) and the solver builder and file writer behind ``vggproto generate``
(:mod:`.generate`).

May import: :mod:`vggproto.errors`, :mod:`vggproto.caffe`.  Never torch.
"""
