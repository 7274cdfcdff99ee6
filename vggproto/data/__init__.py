"""Caffe's data pipeline: Datum/LMDB records, list files, HDF5 sources, the DataTransformer and the VGG
paper's augmentation, plus a multi-process batch loader.

Modules (one job each): :mod:`.datum` (Datum and mean-file encoding), :mod:`.db` (LMDB/LevelDB access),
:mod:`.sources` (record sources and the record stream with sharding/shuffling), :mod:`.transform` (Caffe's
DataTransformer), :mod:`.augment` (scale jitter and colour shift), :mod:`.batches` (batch assembly),
:mod:`.loader` (worker processes, prefetch, pinned memory), :mod:`.build` (layer parameters + net options ->
feed), :mod:`.gpu` (optional CUDA decode/augment), :mod:`.convert` (convert_imageset, compute_image_mean).
The layer classes are in :mod:`vggproto.layers.data`, the commands in :mod:`vggproto.commands.data`.
"""
