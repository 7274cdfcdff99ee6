"""Weight conversion between formats (:mod:`.convert`: caffemodel, Caffe HDF5, .pt, safetensors, torchvision)
and ONNX export checked in onnxruntime (:mod:`.onnx`).

May import: errors, caffe, vgg, weights, data, layers, net.  Never training or evaluation code.
"""
