"""Evaluation as in the paper: FC->conv, dense score maps, crops, scales, fusion, top-k arithmetic, errors, CLI."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import mini_deploy, random_weights, write_images, write_model

from vggproto.cli import main
from vggproto.errors import DataError, NetError, VGGProtoError
from vggproto.evaluation.evaluate import BATCH_VIEW_SIDE, ErrorCount, EvalOptions, evaluate, fuse, load_model, topk_hits
from vggproto.evaluation.views import preprocess
from vggproto.net.dense import load_dense, make_dense
from vggproto.net.interpreter import Net
from vggproto.vgg.generate import build_net

MEAN = (103.939, 116.779, 123.68)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mini")
    model, weights = write_model(tmp, mini_deploy(), seed=3, gain=0.7)
    images = write_images(tmp, [(224, 224), (256, 256), (240, 300), (300, 250)], labels=[0, 1, 2, 3])
    return tmp, model, weights, images


# ------------------------------------------------------------------------------------------ FC -> conv

def test_dense_vgg_equals_deploy_on_a_224_image(tmp_path):
    deploy = build_net("A", "deploy", width_divisor=32, num_classes=10, deploy_batch_size=2)
    model, weights = write_model(tmp_path, deploy, seed=1)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 50, size=(2, 3, 224, 224)).astype(np.float32))
    with torch.no_grad():
        reference = Net(str(model), str(weights)).forward(data=x)["prob"]
        dense, info = load_dense(str(model), str(weights))
        scores = dense.forward(data=x)
    assert [l.type for l in info.param.layer if l.name.startswith("fc")] == ["Convolution"] * 3
    assert info.names == {"fc6": "fc6-conv", "fc7": "fc7-conv", "fc8": "fc8-conv"}
    assert dense.params["fc6-conv"][0].shape == (128, 16, 7, 7)     # fc6 (128 x 784) as a 7x7 conv
    assert dense.params["fc7-conv"][0].shape[2:] == (1, 1)
    assert scores["prob"].shape == (2, 10, 1, 1)
    torch.testing.assert_close(scores["prob"][:, :, 0, 0], reference, rtol=1e-4, atol=1e-6)


def test_given_dense_net_takes_classification_weights(tmp_path):
    deploy = build_net("A", "deploy", width_divisor=32, num_classes=10, deploy_batch_size=1)
    model, weights = write_model(tmp_path, deploy, seed=2)
    dense_path = tmp_path / "A_dense.prototxt"
    from vggproto.caffe.prototxt import write_net
    write_net(build_net("A", "dense", width_divisor=32, num_classes=10), str(dense_path))
    x = torch.randn(1, 3, 256, 256) * 40
    with torch.no_grad():
        derived, _ = load_dense(str(model), str(weights))
        given, info = load_dense(str(dense_path), str(weights))
        a = derived.forward(data=x)["prob"]
        b = given.forward(data=x)["prob"]
    assert info.score_blob == "fc8-conv" and a.shape == (1, 10, 2, 2)
    torch.testing.assert_close(a, b)


def test_non_square_pool5_gives_a_rectangular_kernel(tmp_path):
    model, weights = write_model(tmp_path, mini_deploy(height=224, width=256), seed=4)
    x = torch.randn(2, 3, 224, 256) * 50
    with torch.no_grad():
        reference = Net(str(model), str(weights)).forward(data=x)["prob"]
        dense, info = load_dense(str(model), str(weights))
        out = dense.forward(data=x)["prob"]
    fc6 = next(l for l in info.param.layer if l.name == "fc6-conv").convolution_param
    assert (fc6.kernel_h, fc6.kernel_w) == (7, 8)
    torch.testing.assert_close(out[:, :, 0, 0], reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("q,side", [(224, 1), (256, 2), (384, 6)])
def test_dense_score_map_size(mini, q, side):
    _, model, weights, _ = mini
    dense, info = load_dense(str(model), str(weights))
    with torch.no_grad():
        dense.forward(data=torch.zeros(1, 3, q, q))
    assert tuple(dense.blobs[info.score_blob].shape) == (1, 5, side, side)


def test_fc_after_flatten_cannot_become_a_conv(tmp_path):
    net = mini_deploy()
    flatten = net.layer.add(name="flat", type="Flatten", bottom=["pool5"], top=["flat"])
    net.layer.insert(8, flatten)
    del net.layer[-1]
    net.layer[9].bottom[0] = "flat"   # fc6 now reads the flattened blob
    from vggproto.caffe.prototxt import write_net
    path = tmp_path / "flat.prototxt"
    write_net(net, str(path))
    with pytest.raises(NetError) as err:
        make_dense(str(path))
    from vggproto.caffe.prototxt import layer_lines
    line = dict((name, number) for number, name in layer_lines(path.read_text()))["fc6"]
    text = str(err.value)
    assert f"flat.prototxt:{line}: layer 'fc6'" in text and "not a spatial" in text and "supported:" in text


# ------------------------------------------------------------------------------------------ arithmetic

def test_topk_follows_caffe_ties_count_for_the_label():
    p = np.array([0.3, 0.3, 0.2, 0.1, 0.1])
    assert topk_hits(p, 0) == [True, True] and topk_hits(p, 1) == [True, True]   # tie at the top
    assert topk_hits(p, 2) == [False, True]
    assert topk_hits(p, 4, ks=(1, 3, 4)) == [False, False, True]   # 3 strictly better; the other 0.1 is not
    count = ErrorCount()
    for label in (0, 2, 4, 4):
        count.add(np.array([0.5, 0.2, 0.1, 0.1, 0.1, 0.0]), label)
    count.add(np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]), 0)                       # last of 6: top-5 miss
    assert count.errors() == {"top1_error": 80.0, "top5_error": 20.0}
    np.testing.assert_allclose(fuse([np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([0.5, 0.5])]),
                               [0.5, 0.5])


# ------------------------------------------------------------------------------------------ posteriors

def _posteriors(models, images, **kw):
    options = EvalOptions(workers=0, progress=False, keep_posteriors=True, batch=kw.pop("batch", 8), **kw)
    result = evaluate(models, str(images), options)
    return result, np.stack([result.posteriors[i] for i in sorted(result.posteriors)])


def test_dense_mode_averages_the_score_map_then_softmax_then_flips(mini):
    _, model, weights, images = mini
    m = load_model(str(model), str(weights))
    _, post = _posteriors([m], images, mode="dense", scales=(256,))
    dense, info = load_dense(str(model), str(weights))
    for i, line in enumerate(images.read_text().split("\n")[:4]):
        img = cv2.imread(line.rsplit(" ", 1)[0])
        x = torch.from_numpy(preprocess(img, 256, MEAN))[None]
        with torch.no_grad():
            dense.forward(data=torch.cat([x, x.flip(-1)]))
        maps = dense.blobs[info.score_blob].double().numpy()
        reference = _softmax(maps.mean(axis=(2, 3))).mean(axis=0)
        np.testing.assert_allclose(post[i], reference, rtol=2e-5, atol=1e-8)   # float32 map mean


def test_crops_mode_is_the_deploy_net_on_grid_crops_and_flips(mini):
    _, model, weights, images = mini
    m = load_model(str(model), str(weights))
    _, post = _posteriors([m], images, mode="crops", scales=(240,), grid=3, batch=7)
    deploy = Net(str(model), str(weights))
    line = images.read_text().split("\n")[2]                    # the 240x300 image
    img = preprocess(cv2.imread(line.rsplit(" ", 1)[0]), 240, MEAN)
    crops = [img[:, y:y + 224, x:x + 224] for y in (0, 8, 16) for x in (0, 38, 76)]
    crops += [c[:, :, ::-1] for c in crops]
    with torch.no_grad():
        probs = deploy.forward(data=torch.from_numpy(np.ascontiguousarray(np.stack(crops))))["prob"]
    np.testing.assert_allclose(post[2], probs.double().numpy().mean(axis=0), rtol=1e-4, atol=1e-7)


def test_modes_scales_and_models_average_posteriors(mini, tmp_path):
    tmp, model, weights, images = mini
    other_model, other_weights = write_model(tmp_path, mini_deploy(), seed=9, name="other", gain=0.7)
    m1, m2 = load_model(str(model), str(weights)), load_model(str(other_model), str(other_weights))
    kw = dict(grid=2)
    _, dense = _posteriors([m1], images, mode="dense", scales=(224,), **kw)
    _, crops = _posteriors([m1], images, mode="crops", scales=(224,), **kw)
    _, both = _posteriors([m1], images, mode="dense+crops", scales=(224,), **kw)
    np.testing.assert_allclose(both, (dense + crops) / 2, rtol=1e-6, atol=1e-9)
    _, at256 = _posteriors([m1], images, mode="dense", scales=(256,), **kw)
    _, two_scales = _posteriors([m1], images, mode="dense", scales=(224, 256), **kw)
    np.testing.assert_allclose(two_scales, (dense + at256) / 2, rtol=1e-6, atol=1e-9)
    _, other = _posteriors([m2], images, mode="dense", scales=(224,), **kw)
    result, fused = _posteriors([m1, m2], images, mode="dense", scales=(224,), **kw)
    np.testing.assert_allclose(fused, (dense + other) / 2, rtol=1e-6, atol=1e-9)
    labels = [0, 1, 2, 3]
    expect = ErrorCount()
    for p, label in zip(fused, labels):
        expect.add(p, label)
    summary = result.as_dict(EvalOptions(mode="dense", scales=(224,)), [m1, m2])
    assert summary["images"] == 4
    assert (summary["top1_error"], summary["top5_error"]) == (expect.errors()["top1_error"],
                                                              expect.errors()["top5_error"])
    assert len(summary["models"]) == 2


def test_batching_across_images_and_scales_does_not_change_results(mini):
    _, model, weights, images = mini
    m = load_model(str(model), str(weights))
    _, one = _posteriors([m], images, mode="center", scales=(256,), batch=1)
    _, four = _posteriors([m], images, mode="center", scales=(256,), batch=4)
    np.testing.assert_allclose(one, four, rtol=1e-5, atol=1e-8)
    assert np.all(one.sum(axis=1) == pytest.approx(1.0))
    _, crops1 = _posteriors([m], images, mode="dense+crops", scales=(224, 256), grid=2, batch=3)
    _, crops5 = _posteriors([m], images, mode="dense+crops", scales=(224, 256), grid=2, batch=50)
    np.testing.assert_allclose(crops1, crops5, rtol=1e-5, atol=1e-8)


def test_forward_passes_stay_within_the_pixel_budget(mini, monkeypatch):
    """--batch bounds the pixels of every pass (memory grows with pixels), whatever the mode and scales: a whole
    image at a large scale counts by its pixels, and only a single view larger than the budget goes alone."""
    _, model, weights, images = mini
    m = load_model(str(model), str(weights))
    passes = []
    real = m.net.forward

    def record(**blobs):
        passes.append(tuple(blobs[m.input_blob].shape))
        return real(**blobs)
    monkeypatch.setattr(m.net, "forward", record)
    batch, crop = 6, m.crop_size
    assert crop == BATCH_VIEW_SIDE   # --batch counts 224x224 views: here, crops
    _posteriors([m], images, mode="dense+crops", scales=(224, 320), grid=2, batch=batch)
    for n, _, h, w in passes:
        assert n * h * w <= batch * crop * crop or n == 1, (n, h, w)
    dense_320 = [p for p in passes if p[2] * p[3] > crop * crop]
    assert dense_320 and all(n <= batch * crop * crop // (h * w) or n == 1 for n, _, h, w in dense_320)
    crops = [n for n, _, h, w in passes if (h, w) == (crop, crop)]
    # 4 images x 2 scales x (4 crops + flips), and the dense views of the two square images at Q = 224 (+ flips)
    assert max(crops) == batch and sum(crops) == 4 * 2 * 8 + 2 * 2


def test_channels_last_models_give_the_same_posteriors(mini):
    _, model, weights, images = mini
    plain = _posteriors([load_model(str(model), str(weights))], images, mode="dense+crops", scales=(224,), grid=2)[1]
    nhwc = load_model(str(model), str(weights), channels_last=True)
    assert next(p for p in nhwc.net.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    fast = _posteriors([nhwc], images, mode="dense+crops", scales=(224,), grid=2)[1]
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fused", [1, 2])
def test_progress_counts_views(mini, monkeypatch, fused):
    from vggproto.data import progress
    counted = []
    monkeypatch.setattr(progress.Progress, "update", lambda self, n=1: counted.append(n) if n > 0 else None)
    totals = []
    real_init = progress.Progress.__init__

    def init(self, total, *args, **kwargs):
        totals.append(total)
        real_init(self, total, *args, **kwargs)
    monkeypatch.setattr(progress.Progress, "__init__", init)
    _, model, weights, images = mini
    m = load_model(str(model), str(weights))
    options = EvalOptions(mode="dense+crops", scales=(224, 256), grid=2, workers=0, progress=True)
    evaluate([m] * fused, str(images), options)   # --fuse: each model runs every view
    assert options.views_per_image() == 2 * (4 + 1) * 2
    assert totals == [4 * 20 * fused] and sum(counted) == 80 * fused


# ------------------------------------------------------------------------------------------ bad inputs

def test_labels_out_of_range_name_the_line(mini, tmp_path):
    _, model, weights, _ = mini
    bad = write_images(tmp_path, [(224, 224), (224, 224)], labels=[1, 7])
    with pytest.raises(DataError, match=r"list.txt:2: label 7 .* 5 classes"):
        evaluate([load_model(str(model), str(weights))], str(bad), EvalOptions(workers=0, progress=False))


def test_unreadable_images_fail_or_are_counted(mini, tmp_path):
    _, model, weights, _ = mini
    images = write_images(tmp_path, [(224, 224), (224, 224)], labels=[0, 1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with images.open("a") as f:
        f.write(f"{tmp_path / 'broken.png'} 2\n{tmp_path / 'missing.jpg'} 3\n")
    m = load_model(str(model), str(weights))
    options = EvalOptions(mode="center", scales=(224,), workers=0, progress=False)
    with pytest.raises(DataError, match=r"list.txt:3: cannot decode .*--skip-bad"):
        evaluate([m], str(images), options)
    options.skip_bad = True
    result = evaluate([m], str(images), options)
    summary = result.as_dict(options, [m])
    assert summary["images"] == 2 and summary["skipped"] == 2
    assert "list.txt:4: file does not exist" in summary["bad_images"][1]
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text(f"{tmp_path / 'broken.png'} 2\n")
    with pytest.raises(DataError, match="no readable image"):
        evaluate([m], str(only_bad), options)


def test_fused_models_must_agree_and_scales_must_fit_the_crop(mini, tmp_path):
    _, model, weights, images = mini
    other = write_model(tmp_path, mini_deploy(classes=7), name="seven")
    models = [load_model(str(model), str(weights)), load_model(*map(str, other))]
    with pytest.raises(VGGProtoError, match="number of classes"):
        evaluate(models, str(images), EvalOptions(workers=0, progress=False))
    with pytest.raises(VGGProtoError, match="at least the crop size 224"):
        evaluate(models[:1], str(images), EvalOptions(mode="crops", scales=(200,), workers=0, progress=False))
    with pytest.raises(DataError, match="views of size .*use a larger scale"):   # dense: 7x7 fc6 on a 4x4 map
        evaluate(models[:1], str(images), EvalOptions(mode="dense", scales=(100,), workers=0, progress=False))
    with pytest.raises(VGGProtoError, match="unknown --mode"):
        evaluate(models[:1], str(images), EvalOptions(mode="sparse", workers=0, progress=False))


def test_missing_fc_weights_are_an_error(tmp_path):
    model, _ = write_model(tmp_path, mini_deploy())
    arrays = random_weights(mini_deploy())
    del arrays["fc7"]
    with pytest.raises(VGGProtoError, match="fc7-conv"):
        load_dense(str(model), arrays)


# ------------------------------------------------------------------------------------------ CLI

def test_cli_evaluate_prints_table_and_writes_json(mini, tmp_path):
    _, model, weights, images = mini
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["evaluate", "--model", str(model), "--weights", str(weights), "--list",
                                       str(images), "--mode", "dense+crops", "--scales", "224,256", "--grid", "2",
                                       "--workers", "1", "--json", str(out),
                                       "--fuse", f"{model}:{weights}"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert {"top1_error", "top5_error", "images", "mode", "scales"} <= set(summary)
    assert summary["images"] == 4 and summary["mode"] == "dense+crops" and summary["scales"] == [224, 256]
    assert "top-5 err (%)" in result.output and "fusion" in result.output
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(model), "--weights", str(weights), "--list",
                                    str(images), "--fuse", "nocolon"])
    assert bad.exit_code == 2 and "DEPLOY:WEIGHTS" in bad.output
