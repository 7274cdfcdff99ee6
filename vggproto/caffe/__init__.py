"""Caffe's formats and rules, without torch: the generated schema (:mod:`.proto`), prototxt text and binary
reading/writing (:mod:`.prototxt`), V0/V1 upgrades (:mod:`.upgrade`), NetState filtering (:mod:`.netstate`), the
one blob-shape arithmetic for convolution and pooling (:mod:`.shapes`), the glog log dialect (:mod:`.glog`) and
file handling shared by every writer (:mod:`.files`: atomic writes, magic-byte sniffing), the protobuf wire
codec that walks and rewrites messages without decoding them (:mod:`.wire`) and the schema dialects of Caffe's
forks (:mod:`.dialects`).

May import: :mod:`vggproto.errors`, protobuf, numpy.  Never torch: a test imports this package in a fresh
interpreter and checks that torch stays out of ``sys.modules``.
"""
