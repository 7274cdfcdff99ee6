"""Training as Caffe's solvers do it: the :class:`~vggproto.train.solver.Solver` loop (:mod:`.solver`), update
rules and learning-rate policies (:mod:`.updates`), snapshots and solverstates (:mod:`.snapshot`), the nets a
solver trains and tests (:mod:`.setup`), the one TEST scoring loop shared with ``caffe test`` (:mod:`.scoring`),
multi-process data parallelism (:mod:`.distributed`), ``caffe train`` as one call (:mod:`.run`), the glog training
log and CSV log (:mod:`.log`) and their parser (:mod:`.logparse`).

May import: errors, caffe, vgg, weights, data, layers, net.  Never evaluation, conversion, viz or commands.
"""
