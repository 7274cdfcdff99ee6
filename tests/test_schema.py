"""The committed generated module must be exactly what protoc makes of proto/caffe.proto."""
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from vggproto._pb import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent


def test_generated_module_matches_proto(tmp_path):
    """protoc on proto/caffe.proto yields the descriptor embedded in the committed caffe_pb2.py."""
    out = tmp_path / "caffe.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}",
                    f"--descriptor_set_out={out}", str(ROOT / "proto" / "caffe.proto")], check=True)
    from_proto = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    _drop_json_names(from_proto.message_type)  # protoc adds them to descriptor sets, not to generated code
    committed = descriptor_pb2.FileDescriptorProto.FromString(caffe_pb2.DESCRIPTOR.serialized_pb)
    assert from_proto == committed, "run `make proto` to regenerate vggproto/_pb/caffe_pb2.py"


def _drop_json_names(messages):
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def test_every_layer_param_number_of_the_reference():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_number
    assert set(range(100, 149)) <= set(fields)
    assert fields[147].name == "swish_param" and fields[148].name == "clip_param"
    assert fields[143].name == "input_param" and fields[121].name == "pooling_param"


def test_the_only_extension_is_marked_and_above_1000():
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
    assert found == [("caffe.TransformationParameter", "vgg_augmentation_param", 1000)]
    assert "vggproto extension" in (ROOT / "proto" / "caffe.proto").read_text()


def test_key_defaults():
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert caffe_pb2.DataParameter().backend == caffe_pb2.DataParameter.LEVELDB
    assert caffe_pb2.SolverParameter().solver_mode == caffe_pb2.SolverParameter.GPU
    assert caffe_pb2.SolverParameter().snapshot_format == caffe_pb2.SolverParameter.BINARYPROTO
    assert caffe_pb2.FillerParameter().type == "constant"
    assert caffe_pb2.ImageDataParameter().batch_size == 1
    assert caffe_pb2.NetState().phase == caffe_pb2.TEST
