"""The hand-written protobuf wire codec, checked against protobuf's own encoder."""
from __future__ import annotations

import io

import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import (
    FIXED32,
    LENGTH,
    VARINT,
    Field,
    LazyArray,
    WireError,
    encode_tag,
    encode_varint,
    fixed_run,
    iter_fields,
    part_size,
    read_varint,
    split_message,
    unpacked_values,
    write_part,
)
from vggproto.errors import WeightsError


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**31, 2**35 + 7, 2**63 - 1, 2**64 - 1])
def test_varint_round_trip(value):
    data = encode_varint(value)
    assert read_varint(data, 0, len(data)) == (value, len(data))


def test_varint_matches_protobuf_including_negative_int32():
    for value in (0, 5, 300, 2**31 - 1, -1, -300):
        blob = caffe_pb2.BlobProto(num=value)
        assert blob.SerializeToString() == encode_tag(1, VARINT) + encode_varint(value)


def test_varint_errors_name_offset():
    with pytest.raises(WireError, match="truncated varint.*offset 2"):
        read_varint(b"\x00\x00\x80\x80", 2, 4)
    with pytest.raises(WireError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 12, 0, 12)
    assert issubclass(WireError, WeightsError)


def test_iter_fields_matches_message_layout():
    layer = caffe_pb2.LayerParameter(name="conv", type="Convolution", bottom=["a"], top=["b"], loss_weight=[2.5])
    layer.convolution_param.num_output = 7
    data = layer.SerializeToString()
    fields = list(iter_fields(data, 0, len(data)))
    assert [(f.number, f.wire_type) for f in fields] == [(1, LENGTH), (2, LENGTH), (3, LENGTH), (4, LENGTH),
                                                          (5, FIXED32), (106, LENGTH)]
    assert data[fields[0].data_start:fields[0].end] == b"conv"
    assert np.frombuffer(fields[4].value.to_bytes(4, "little"), "<f4")[0] == 2.5
    assert fields[-1].end == len(data)


@pytest.mark.parametrize("data, message", [
    (b"\x0a\x05abc", "truncated: field 1 needs 5 bytes but only 3 remain at byte offset 0"),
    (b"\x08\x01\x0f", r"invalid wire type 7 for field 1 .* at byte offset 2"),
    (b"\x0b", "invalid wire type 3"),
    (b"\x00\x01", "field number 0"),
    (b"\x2d\x00\x00", "fixed-width field 5 runs past the end"),
])
def test_iter_fields_rejects_malformed(data, message):
    with pytest.raises(WireError, match=message):
        list(iter_fields(data, 0, len(data)))


def test_split_message_partitions_by_field_number():
    layer = caffe_pb2.LayerParameter(name="ip", type="InnerProduct", bottom=["x"], phase=caffe_pb2.TEST)
    layer.inner_product_param.num_output = 3
    layer.blobs.add().data.extend([1.0, 2.0])
    data = layer.SerializeToString()
    lo, mid, hi = split_message(data, 7)
    assert lo + mid + hi == data
    assert caffe_pb2.LayerParameter.FromString(mid).blobs[0].data == [1.0, 2.0]
    assert caffe_pb2.LayerParameter.FromString(hi).phase == caffe_pb2.TEST
    assert caffe_pb2.LayerParameter.FromString(lo).name == "ip"


def test_fixed_run_and_unpacked_values():
    values = np.array([1.5, -2.0, 3.25, 7.0], np.float32)
    record = b"".join(b"\x2d" + v.tobytes() for v in values) + b"\x08\x01"
    u8 = np.frombuffer(record, np.uint8)
    assert fixed_run(u8, 0, len(record), 0x2d, 4) == 4
    assert fixed_run(u8, 5, len(record), 0x2d, 4) == 3
    assert fixed_run(u8, 20, len(record), 0x2d, 4) == 0
    np.testing.assert_array_equal(unpacked_values(record, 0, 4, 4, "<f4"), values)


def test_streamed_fields_equal_protobuf_serialization():
    values = np.arange(10, dtype=np.float32) / 3
    blob = Field(7, [Field(5, [values]), Field(7, [caffe_pb2.BlobShape(dim=[2, 5]).SerializeToString()])])
    lazy = Field(7, [Field(5, [LazyArray(values.nbytes, lambda: values)]),
                     Field(7, [caffe_pb2.BlobShape(dim=[2, 5]).SerializeToString()])])
    layer = Field(100, [caffe_pb2.LayerParameter(name="x").SerializeToString(), blob, lazy])
    out = io.BytesIO()
    write_part(out, layer)
    expected = caffe_pb2.NetParameter()
    proto = expected.layer.add(name="x")
    for _ in range(2):
        proto.blobs.add(data=values.tolist(), shape=caffe_pb2.BlobShape(dim=[2, 5]))
    assert out.getvalue() == expected.SerializeToString()
    assert part_size(layer) == len(out.getvalue())


def test_lazy_array_size_is_checked():
    with pytest.raises(ValueError, match="announced"):
        write_part(io.BytesIO(), LazyArray(8, lambda: np.zeros(1, np.float32)))
