"""The compiled evaluation path (core/engines/torch/compiled.py): same loss and gradient as eager, one compile
for several sizes, and a fallback that never fails a run.

Compiling is slow (tens of seconds on 2 cores), so this file compiles ONE graph, of a tiny network
built from the same pieces as the real objective (convolution, ReLU, average pool, our Gram
Function with its hand-written backward, the losses); the rest monkeypatches the compiler.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from stylefu.core.engines.torch import compiled
from stylefu.core.engines.torch.compiled import Evaluation, compile_problem, should_compile
from stylefu.core.method import losses
from stylefu.core.method.config import PRESETS


class TinyObjective:
    """Two conv+ReLU layers, a pool between, Gram and content losses: the real objective's ops."""

    def __init__(self, seed: int, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        self.w1 = (torch.randn(8, 3, 3, 3, generator=g) * 0.3).to(dtype)
        self.w2 = (torch.randn(16, 8, 3, 3, generator=g) * 0.1).to(dtype)
        self.target = torch.rand(1, 16, 1, 1, generator=g)
        self.gram_target = torch.rand(1, 8, 8, generator=g) * 0.01
        self.dtype = dtype

    def __call__(self, image):
        x = image.to(self.dtype).contiguous(memory_format=torch.channels_last)
        a = F.relu(F.conv2d(x, self.w1, padding=1))
        b = F.relu(F.conv2d(F.avg_pool2d(a, 2), self.w2, padding=1))
        style = losses.style_layer_loss(losses.gram(a), self.gram_target)
        content = losses.content_loss(b, self.target.expand_as(b))
        parts = {"style": style, "content": content, "tv": losses.tv_loss(image)}
        return 1e3 * style + content + 0.1 * parts["tv"], parts


def _image(h, w, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _loss_and_grad(evaluation, image, factor=1.0):
    """What an optimiser step sees: the loss, its parts, and factor x the gradient."""
    x = image.clone().requires_grad_(True)
    total, parts, backward = evaluation(x)
    backward(factor)
    return total.detach(), {k: v.detach() for k, v in parts.items()}, x.grad


@pytest.fixture
def fresh_state(monkeypatch):
    """Each test sees (and leaves) the process's compile state as it found it."""
    monkeypatch.setitem(compiled._state, "problem", None)
    monkeypatch.setitem(compiled._state, "told", False)


def test_compiled_matches_eager_and_one_graph_serves_two_sizes(tmp_path, monkeypatch, fresh_state):
    problem = compile_problem(torch.device("cpu"))
    if problem:
        pytest.skip(f"torch.compile cannot run here: {problem}")
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "inductor"))
    before = compiled.compile_count()
    # Loss tolerance: float32 sums reordered by fusion (1e-5 relative); gradient: the same.
    for k, (h, w) in enumerate([(32, 40), (48, 24)]):
        objective = TinyObjective(seed=k)  # a new objective per level, as stylize makes them
        eager = _loss_and_grad(Evaluation(objective, compiled=False), _image(h, w, k), 2.0)
        fast = Evaluation(objective, compiled=True)
        total, parts, grad = _loss_and_grad(fast, _image(h, w, k), 2.0)
        assert fast.compiled, compiled.failure()
        assert torch.allclose(total, eager[0], rtol=1e-5, atol=0)
        for name in parts:
            assert torch.allclose(parts[name], eager[1][name], rtol=1e-5, atol=1e-12), name
        scale = float(eager[2].abs().max())
        assert float((grad - eager[2]).abs().max()) <= 1e-5 * scale
        assert grad.shape == (1, 3, h, w)
    # One graph (forward and backward count once each at most) for both sizes and objectives.
    made = compiled.compile_count() - before
    assert 1 <= made <= 2, made


def test_a_compiler_failure_falls_back_with_one_line(monkeypatch, fresh_state, caplog):
    if compile_problem(torch.device("cpu")):
        pytest.skip("no compiler: the fallback is what runs anyway (tested below)")

    def broken(gm, example_inputs):
        raise RuntimeError("C++ compile error: cc1plus: out of luck\nsecond line")

    monkeypatch.setattr(compiled, "_backend", broken)

    class Other(TinyObjective):  # another code object: nothing cached from the test above
        def __call__(self, image):
            return super().__call__(image * 1.0)

    objective = Other(seed=3)
    lines = []
    evaluation = Evaluation(objective, compiled=True, log=lines.append)
    total, _, grad = _loss_and_grad(evaluation, _image(16, 16))
    again = _loss_and_grad(evaluation, _image(16, 16))
    expected = _loss_and_grad(Evaluation(objective, compiled=False), _image(16, 16))
    assert not evaluation.compiled
    assert torch.equal(total, expected[0]) and torch.equal(grad, expected[2])
    assert torch.equal(again[2], expected[2])
    assert len(lines) == 1 and "uncompiled" in lines[0] and "out of luck" in lines[0]
    assert "\n" not in lines[0]
    assert compiled.failure()


def test_a_compile_cache_over_quota_falls_back_and_leaves_nothing(tmp_path, monkeypatch,
                                                                  fresh_state):
    """Inductor's writes into the compile cache fail with EDQUOT (test_faults.over_quota): one
    line, the eager result, and no half-written file of inductor's left in the cache."""
    if compile_problem(torch.device("cpu")):
        pytest.skip("no compiler: nothing is written to the compile cache")
    from test_faults import over_quota

    cache = tmp_path / "quota" / "inductor"
    monkeypatch.setenv(compiled.CACHE_ENV, str(cache))

    class Other(TinyObjective):  # another code object: nothing cached from the tests above
        def __call__(self, image):
            return super().__call__(image * 2.0)

    objective, lines = Other(seed=4), []
    with over_quota(tmp_path / "quota", monkeypatch):
        evaluation = Evaluation(objective, compiled=True, log=lines.append)
        total, _, grad = _loss_and_grad(evaluation, _image(16, 16))
    expected = _loss_and_grad(Evaluation(objective, compiled=False), _image(16, 16))
    assert torch.equal(total, expected[0]) and torch.equal(grad, expected[2])
    assert len(lines) == 1 and "Disk quota exceeded" in lines[0] and not evaluation.compiled
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_no_cpp_compiler_means_eager_with_one_line(monkeypatch, fresh_state):
    import torch._inductor.cpp_builder as builder
    from torch._inductor.exc import InvalidCxxCompiler

    def missing():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(builder, "get_cpp_compiler", missing)
    lines = []
    plan = [((512, 512), 110)]
    assert should_compile("on", torch.device("cpu"), torch.bfloat16, plan, lines.append) is False
    assert should_compile("auto", torch.device("cpu"), torch.bfloat16, plan, lines.append) is False
    assert lines == ["the loss runs uncompiled (no C++ compiler was found)."]


def test_old_torch_means_eager(monkeypatch, fresh_state):
    monkeypatch.setattr(torch, "__version__", "2.1.0+cpu")
    assert "older than" in compile_problem(torch.device("cpu"))


# Levels (size, evaluations) of `normal` at 512 px, the run the compile thresholds are set by.
_NORMAL = PRESETS["normal"]
NORMAL_512 = [((128, 128), _NORMAL["coarse_evaluations"]), ((256, 256), _NORMAL["coarse_evaluations"]),
              ((512, 512), _NORMAL["evaluations"])]


def test_auto_compiles_long_runs_only(monkeypatch, fresh_state):
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    monkeypatch.setattr(compiled, "_tell", lambda line, log: None)
    cpu = torch.device("cpu")
    draft_256 = [((64, 64), 60), ((128, 128), 60), ((256, 256), 30)]
    preview_192 = [((48, 48), 60), ((96, 96), 60), ((192, 192), 30)]
    monkeypatch.setattr(compiled, "cpu_has_amx", lambda: True)
    assert should_compile("auto", cpu, torch.bfloat16, NORMAL_512)
    assert not should_compile("auto", cpu, torch.bfloat16, draft_256)
    assert not should_compile("auto", cpu, torch.bfloat16, preview_192)
    assert should_compile("on", cpu, torch.bfloat16, draft_256)
    assert not should_compile("off", cpu, torch.bfloat16, NORMAL_512)
    # Within a compiling run, `auto` leaves the tiny coarse levels eager; `on` compiles them too.
    assert [compiled.level_compiled("auto", s) for s, _ in NORMAL_512] == [False, True, True]
    assert all(compiled.level_compiled("on", s) for s, _ in NORMAL_512)


def test_without_amx_auto_compiles_only_the_longest_runs(monkeypatch, fresh_state):
    """Without AMX a compiled bf16 evaluation saves too little to repay the warm load in `normal`."""
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    monkeypatch.setattr(compiled, "_tell", lambda line, log: None)
    monkeypatch.setattr(compiled, "cpu_has_amx", lambda: False)
    best_512 = [((128, 128), 200), ((256, 256), 200), ((512, 512), 500)]
    assert not should_compile("auto", torch.device("cpu"), torch.bfloat16, NORMAL_512)
    assert should_compile("auto", torch.device("cpu"), torch.bfloat16, best_512)
    assert should_compile("on", torch.device("cpu"), torch.bfloat16, NORMAL_512)
    # On CUDA auto never compiles (10x slower than eager on an H200); `on` still does.
    assert not should_compile("auto", torch.device("cuda"), torch.bfloat16, NORMAL_512)
    assert not should_compile("auto", torch.device("cuda"), torch.bfloat16, best_512)
    assert should_compile("on", torch.device("cuda"), torch.bfloat16, NORMAL_512)
    assert isinstance(compiled.cpu_has_amx(), bool)


def test_float32_without_amx_compiles_normal_at_512(monkeypatch, fresh_state):
    """On the float32 path (an AVX2-only laptop's) a compiled evaluation takes about a quarter
    less time: `normal` at 512 px compiles there, `draft` and previews do not."""
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    monkeypatch.setattr(compiled, "_tell", lambda line, log: None)
    monkeypatch.setattr(compiled, "cpu_has_amx", lambda: False)
    cpu = torch.device("cpu")
    normal_256 = [((64, 64), 40), ((128, 128), 40), ((256, 256), 110)]
    assert should_compile("auto", cpu, torch.float32, NORMAL_512)
    assert not should_compile("auto", cpu, torch.float32, normal_256)
    draft_256 = [((64, 64), 60), ((128, 128), 60), ((256, 256), 30)]
    assert not should_compile("auto", cpu, torch.float32, draft_256)
    assert not should_compile("auto", torch.device("cuda"), torch.float32, NORMAL_512)


def test_the_cache_lives_in_stylefus_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(compiled.CACHE_ENV, raising=False)
    monkeypatch.setenv("STYLEFU_CACHE", str(tmp_path))
    assert compiled.inductor_cache().parent == tmp_path
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "mine"))
    assert compiled.inductor_cache() == tmp_path / "mine"


def test_the_run_says_so_when_it_compiles_cold(monkeypatch, tmp_path, fresh_state, caplog):
    monkeypatch.setattr(compiled, "compile_problem", lambda device: None)
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "empty"))
    with caplog.at_level(logging.INFO, logger="stylefu"):
        assert should_compile("on", torch.device("cpu"), torch.bfloat16, [((64, 64), 1)])
    assert "compiling the loss" in caplog.text


def test_the_torch_weights_copy_loads_the_same_network(model_path):
    """Start-up: a later process loads the weights from the torch copy in the cache (no onnx);
    it holds exactly the ONNX file's weights and metadata, and a damaged copy is made again."""
    import os

    from stylefu.core.engines.torch.vggnet import load_torch_model, torch_weights_file

    first = load_torch_model(model_path)
    ready = torch_weights_file(model_path)
    assert ready.is_file() and ready.parent.parent == compiled.cache_dir()
    again = load_torch_model(model_path)
    assert again.info == first.info
    for a, b in zip(first.convs, again.convs):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    ready.write_bytes(b"damaged")
    third = load_torch_model(model_path)
    assert torch.equal(third.convs[0].weight, first.convs[0].weight)
    assert ready.stat().st_size > 1000  # written again
    stat = model_path.stat()
    os.utime(model_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a replaced file
    try:
        assert torch_weights_file(model_path) != ready
    finally:
        os.utime(model_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_short_run_stays_eager_by_default(model_path, images):
    """`auto` at a test's size: nothing to win, so nothing is compiled (and the metrics say so)."""
    from stylefu.core import Config, stylize

    content, style = images
    before = compiled.compile_count()
    result = stylize(content, style, model=model_path,
                     config=Config(size=64, preset="draft", evaluations=2, coarse_evaluations=2))
    assert result.metrics["compiled"] is False and result.metrics["compile_seconds"] == 0
    assert compiled.compile_count() == before
