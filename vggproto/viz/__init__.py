"""Pictures: nets drawn with graphviz as Caffe's draw_net does (:mod:`.draw`) and training curves from Caffe or
vggproto logs (:mod:`.plot`).

May import: everything up to train/evaluation/convert (it reads training logs through :mod:`vggproto.train.logparse`).
"""
