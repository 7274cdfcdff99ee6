"""The paper's evaluation (Sect. 3.2, 4): test views (:mod:`.views`: centre, crops, flips, scales), dense and
multi-crop scoring with fusion and top-1/top-5 errors (:mod:`.evaluate`), single-image classification
(:mod:`.classify`), feature extraction (:mod:`.extract`) and the commands' runs as single calls (:mod:`.run`).

May import: errors, caffe, vgg, weights, data, layers, net.  Never training or conversion code.
"""
