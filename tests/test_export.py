"""The model artifact: graph, metadata, parity with torch, and refusal of bad checkpoints."""

from __future__ import annotations

import json
import pickle

import numpy as np
import onnx
import pytest
import torch
from test_download import make_checkpoint

from stylefu.core.cli.main import main
from stylefu.core.engines.torch.vggnet import load_torch_model
from stylefu.core.errors import UserError
from stylefu.core.network.forward import FeatureEngine
from stylefu.core.network.vgg import EXPORTED_LAYERS, read_artifact
from stylefu.export import export
from stylefu.export.artifact import IR_VERSION, MAX_RELATIVE_ERROR

PARITY_TOLERANCE = 1e-4  # largest |ORT - torch| relative to the output's largest value


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_graph_interface_and_metadata(model_path):
    model = onnx.load(str(model_path))
    assert model.ir_version == IR_VERSION
    (image,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert image.name == "image" and dims == ["N", 3, "H", "W"]
    assert [o.name for o in model.graph.output] == list(EXPORTED_LAYERS)
    # Nothing past relu5_1: 13 convolutions (conv1_1 ... conv5_1), 4 pools.
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 13 and ops.count("AveragePool") == 4
    info, _ = read_artifact(model_path)
    assert info.weights_source == "random (seed 0)" and len(info.weights_sha256) == 64
    assert info.pooling == "avg" and info.layers == EXPORTED_LAYERS
    assert info.preprocessing["name"] == "torchvision" and info.format_version == "2"
    assert info.architecture == "vgg19"


def test_vgg16_graph_from_its_table(tmp_path):
    """--arch vgg16: 11 convolutions and 4 pools up to relu5_1, the same six outputs, rgb01 kept."""
    path, errors = export("random", tmp_path / "v16.onnx", arch="vgg16", preprocessing="rgb01",
                          progress=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("Conv") == 11 and ops.count("AveragePool") == 4
    info, _ = read_artifact(path)
    assert info.architecture == "vgg16" and info.preprocessing["name"] == "rgb01"
    assert info.preprocessing["mean"] == [0.0] * 3 and info.preprocessing["std"] == [1.0] * 3
    assert max(errors.values()) < MAX_RELATIVE_ERROR
    out = FeatureEngine(path, device="cpu").features(np.full((1, 3, 32, 48), 0.5, np.float32))
    assert out["relu5_1"].shape[2:] == (2, 3) and out["relu4_2"].shape[2:] == (4, 6)


def test_format_1_artifact_reads_as_vgg19(model_path, tmp_path):
    """A file written before the architecture key existed (format 1) still loads, as VGG19."""
    model = onnx.load(str(model_path))
    meta = {p.key: p.value for p in model.metadata_props}
    meta.pop("stylefu.architecture")
    meta.update({"stylefu.kind": "stylefu-vgg19-features", "stylefu.format_version": "1"})
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    old = tmp_path / "old.onnx"
    onnx.save(model, str(old))
    info, _ = read_artifact(old)
    assert info.architecture == "vgg19" and info.format_version == "1"
    assert len(load_torch_model(old).convs) == 13


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (96, 80)])
def test_onnx_runtime_matches_torch(model_path, size):
    engine, net = FeatureEngine(model_path, device="cpu"), load_torch_model(model_path)
    batch = np.random.default_rng(1).random((2, 3, *size), dtype=np.float32)  # batch of two
    ort_out = engine.features(batch)
    with torch.no_grad():
        torch_out = net(torch.from_numpy(batch))
    for name in EXPORTED_LAYERS:
        assert ort_out[name].shape == tuple(torch_out[name].shape)
        assert relative_error(ort_out[name], torch_out[name].numpy()) < PARITY_TOLERANCE, name


def test_caffe_preprocessing_and_max_pooling(tmp_path):
    ckpt = tmp_path / "vgg.pth"
    ckpt.write_bytes(make_checkpoint())
    path, errors = export(str(ckpt), tmp_path / "caffe.onnx", pooling="max",
                          preprocessing="caffe", progress=False)
    assert max(errors.values()) < MAX_RELATIVE_ERROR
    info, _ = read_artifact(path)
    assert info.pooling == "max" and info.preprocessing["channel_order"] == [2, 1, 0]
    assert info.weights_source == "file vgg.pth"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MaxPool") == 4
    # BGR order inside the graph: swapping R and B in the input changes the features.
    engine = FeatureEngine(path)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    a, b = engine.features(x)["relu1_1"], engine.features(x[:, ::-1].copy())["relu1_1"]
    assert not np.allclose(a, b)


def test_random_weights_are_deterministic(tmp_path, model_path):
    again, _ = export("random", tmp_path / "again.onnx", seed=0, progress=False)
    other, _ = export("random", tmp_path / "other.onnx", seed=1, progress=False)
    sha = [read_artifact(p)[0].weights_sha256 for p in (model_path, again, other)]
    assert sha[0] == sha[1] != sha[2]


def test_safetensors_source(tmp_path):
    from safetensors.torch import save_file

    state = torch.load(_write(tmp_path / "v.pth", make_checkpoint()), weights_only=True)
    save_file(state, str(tmp_path / "v.safetensors"))
    path, _ = export(str(tmp_path / "v.safetensors"), tmp_path / "s.onnx", progress=False)
    assert read_artifact(path)[0].weights_source == "file v.safetensors"


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


class Exploit:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def bad_checkpoints(tmp_path):
    state = torch.load(_write(tmp_path / "ok.pth", make_checkpoint()), weights_only=True)
    missing = {k: v for k, v in state.items() if not k.startswith("features.28.")}
    wrong_shape = dict(state, **{"features.0.weight": torch.zeros(64, 3, 5, 5)})
    cases = {}
    for name, value in (("missing", missing), ("shape", wrong_shape)):
        torch.save(value, tmp_path / f"{name}.pth")
        cases[name] = (tmp_path / f"{name}.pth", "no 'features.28" if name == "missing" else "shape")
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"features.0.weight": Exploit()}))
    cases["evil"] = (tmp_path / "evil.pth", "pickled code")
    (tmp_path / "cut.pth").write_bytes(make_checkpoint()[:5000])
    cases["truncated"] = (tmp_path / "cut.pth", "not a readable checkpoint")
    # Files of other kinds were "pickled code, which stylefu refuses to run"; NaN weights failed
    # the verification with a dict of inf.
    (tmp_path / "keras.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(500))
    cases["hdf5"] = (tmp_path / "keras.h5", "is an HDF5 file")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07stylefu" + bytes(500))
    cases["onnx"] = (tmp_path / "model.onnx", "is an ONNX model, not a checkpoint")
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    cases["nan"] = (tmp_path / "nan.pth", "conv1_1.weight holds NaN or infinite values")
    return cases


@pytest.mark.parametrize("case", ["missing", "shape", "evil", "truncated", "hdf5", "onnx", "nan"])
def test_bad_checkpoints_are_refused_cleanly(tmp_path, case, capsys):
    path, message = bad_checkpoints(tmp_path)[case]
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(UserError, match=message):
        export(str(path), out, progress=False)
    code = main(["export", "--weights", str(path), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and message.split("'")[0] in err
    assert "this pickle runs code" not in capsys.readouterr().out
    assert not out.exists()
    assert not out.parent.exists()  # no temporary left behind, nor the folder made for -o


def test_a_whole_checkpoint_is_read_as_its_own_network(tmp_path):
    """torchvision's whole VGG16 (the file `export --arch vgg16` downloads) was taken for VGG19
    by its conv5_3, which sits at VGG19's conv5_1 key (features.28) with its shape, then refused
    ("has no 'features.16.weight'")."""
    from stylefu.core.network.vgg import ARCHITECTURES
    from stylefu.export.weights import detect_architecture, select_convs

    beyond = {"vgg16": (26, 28), "vgg19": (30, 32, 34)}  # conv5_2 onwards: past what is exported
    for arch, table in ARCHITECTURES.items():
        state = {}
        for name, cin, cout in table.convs:
            index = table.torchvision_index[name]
            state[f"features.{index}.weight"] = np.zeros((cout, cin, 3, 3), np.float32)
            state[f"features.{index}.bias"] = np.zeros(cout, np.float32)
        assert detect_architecture(state) == arch  # cut at conv5_1
        for index in beyond[arch]:
            state[f"features.{index}.weight"] = np.zeros((512, 512, 3, 3), np.float32)
            state[f"features.{index}.bias"] = np.zeros(512, np.float32)
        assert detect_architecture(state) == arch  # whole
        assert len(select_convs(state, "w.pth", detect_architecture(state))) == 2 * len(table.convs)


def test_export_refuses_to_write_over_its_own_weights(tmp_path):
    # the checkpoint was replaced by the model, exit 0
    weights = tmp_path / "w.pth"
    weights.write_bytes(make_checkpoint())
    before = weights.read_bytes()
    with pytest.raises(UserError, match="is the weights file itself"):
        export(str(weights), weights, progress=False)
    assert weights.read_bytes() == before


def test_a_seed_for_weights_that_take_none_is_refused(tmp_path, capsys):
    # taken and ignored: `--weights w.pth --seed 5` wrote w.pth's model
    code = main(["export", "--weights", str(tmp_path / "w.pth"), "--seed", "5",
                 "-o", str(tmp_path / "m.onnx")])
    assert code == 2 and capsys.readouterr().err == (
        f"stylefu: error: --seed chooses --weights random's weights; leave it out for --weights "
        f"{tmp_path / 'w.pth'}.\n")


def test_not_a_stylefu_artifact(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(UserError, match="not a stylefu model"):
        load_torch_model(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(UserError, match="not a readable ONNX"):
        load_torch_model(tmp_path / "junk.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")  # was "an ONNX file but not a stylefu model"
    with pytest.raises(UserError, match=r"empty.onnx is empty \(0 bytes\)"):
        load_torch_model(tmp_path / "empty.onnx")


def test_a_vgg16_default_model_is_found_and_info_says_its_network(random16_model_path, images,
                                                                  capsys, tmp_path):
    """A VGG16 exported without -o keeps the default model's one name (the plug-ins' settings
    record that path): `run` without --model uses it, and `info` says the network is VGG16 and
    why the name says vgg19."""
    import shutil

    from stylefu.core.io.images import save_image
    from stylefu.core.io.paths import default_model_path

    default_model_path().parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(random16_model_path, default_model_path())
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == str(default_model_path()) and info["architecture"] == "vgg16"
    assert "whatever its network (vgg16 here)" in info["model_name"]
    content, style = (str(save_image(tmp_path / f"{n}.png", a)) for n, a in zip("cs", images))
    assert main(["run", content, style, "-o", str(tmp_path / "o.png"), "--size", "64",
                 "--levels", "1", "--evaluations", "2", "--progress", "none"]) == 0
    assert f"model {default_model_path().resolve()}" in capsys.readouterr().err


def test_cli_export_default_path_and_info(capsys, monkeypatch, tmp_path):
    """Without -o the model lands at the cache's default path, where `info` finds it."""
    assert main(["export", "--weights", "random", "--seed", "3"]) == 0
    assert "RANDOM weights" in capsys.readouterr().err
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"].endswith("vgg19-features.onnx") and "model_name" not in info
    assert info["weights"].startswith("random (seed 3)")
    assert info["onnxruntime_provider"] == "CPUExecutionProvider"
    assert info["devices"].startswith("cpu")
    from importlib import metadata

    assert info["stylefu"] == metadata.version("stylefu")
    with pytest.raises(SystemExit) as exited:  # `stylefu --version`: the same, for bug reports
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"stylefu {info['stylefu']}\n"
    monkeypatch.setenv("STYLEFU_MODEL", str(tmp_path / "none.onnx"))
    assert main(["info", "--json"]) == 0
    assert "none installed" in capsys.readouterr().out


def test_export_help_gives_each_default_once_and_never_none():
    """`stylefu export --help`: one default per option, in words ("the weights' own"), never
    argparse's added "(default: None)" or "(default: False)" after the option's own."""
    from stylefu.core.cli.main import build_parser

    parser = build_parser()
    text = parser.commands["export"].format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    options = " ".join(text.split()).split(" --")  # one chunk per option, lines joined
    assert all(chunk.count("(default:") <= 1 for chunk in options)
    assert "(default: torchvision)" in text and "(default: the weights' own" in text


def test_export_writes_where_the_commands_look(tmp_path, monkeypatch, capsys):
    """-o's default is $STYLEFU_MODEL when set (what run and info then load), as its help says."""
    from stylefu.core.cli.main import build_parser

    target = tmp_path / "mine.onnx"
    monkeypatch.setenv("STYLEFU_MODEL", str(target))
    assert main(["export", "--weights", "random", "--progress", "none"]) == 0
    assert target.is_file()
    assert "$STYLEFU_MODEL" in build_parser().commands["export"].format_help()
