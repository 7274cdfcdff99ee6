"""The committed generated module must be exactly what protoc makes of proto/caffe.proto."""
import subprocess
import sys
from pathlib import Path

from vggproto.caffe.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_module_matches_proto(tmp_path):
    """protoc (grpcio-tools, as `make proto` runs it) on proto/caffe.proto reproduces the committed module."""
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}",
                    str(ROOT / "proto" / "caffe.proto")], check=True)
    fresh = (tmp_path / "caffe_pb2.py").read_text()
    committed = (ROOT / "vggproto" / "caffe" / "proto" / "caffe_pb2.py").read_text()
    assert fresh == committed, "run `make proto` to regenerate vggproto/caffe/proto/caffe_pb2.py"


def test_every_layer_param_number_of_the_reference():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_number
    assert set(range(100, 149)) <= set(fields)
    assert fields[147].name == "swish_param" and fields[148].name == "clip_param"
    assert fields[143].name == "input_param" and fields[121].name == "pooling_param"


def test_the_only_extension_is_marked_and_above_1000():
    """Fields >= 1000 are vggproto's one extension and fork fields of the dialect table."""
    from vggproto.caffe.dialects import DIALECTS
    moved = {(f"caffe.{f.message}", f.name, f.superset) for d in DIALECTS.values() for f in d.fields}
    def walk(desc, seen):
        for field in desc.fields:
            if field.number >= 1000 and desc.full_name not in ("caffe.V1LayerParameter", "caffe.V0LayerParameter"):
                seen.append((desc.full_name, field.name, field.number))
        for nested in desc.nested_types:
            walk(nested, seen)
        return seen
    found = []
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        walk(message, found)
    assert [f for f in found if f not in moved] == [("caffe.TransformationParameter", "vgg_augmentation_param", 1000)]
    assert "vggproto extension" in (ROOT / "proto" / "caffe.proto").read_text()


def test_key_defaults():
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.SolverParameter().solver_mode == caffe_pb2.SolverParameter.GPU
    assert caffe_pb2.SolverParameter().snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.ImageDataParameter().batch_size == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
