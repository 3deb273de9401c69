"""The on-disk target cache: saves forward passes, survives corruption and concurrent writers."""

import json
import multiprocessing
import os

import numpy as np
import pytest
import torch

from stylefu.core import Config, load_model
from stylefu.core.io.cache import MAX_BYTES, TargetCache, array_hash, cache_limit
from stylefu.core.io.paths import cache_dir
from stylefu.core.method.targets import compute_targets


def entries():
    return sorted((cache_dir() / "targets").rglob("*.npz"))


def assert_same_targets(a, b):
    assert torch.equal(a.content, b.content)
    assert a.grams.keys() == b.grams.keys()
    for name in a.grams:
        assert torch.equal(a.grams[name], b.grams[name]), name


def test_second_run_with_the_same_style_does_not_call_the_engine(model_path, images):
    content, style = images
    model = load_model(model_path, "cpu")
    config = Config()
    start = model.engine.calls
    first = compute_targets(model, content, [style], (48, 64), config)
    assert model.engine.calls == start + 2  # content features, style Grams
    assert len(entries()) == 2
    again = compute_targets(model, content, [style], (48, 64), config)
    assert model.engine.calls == start + 2  # both came from disk
    assert_same_targets(first, again)

    # A new style costs one pass, the known one none; the blend is applied after the cache.
    other = np.ascontiguousarray(style[::-1])
    blended = compute_targets(model, content, [style, other], (48, 64),
                              config.with_(style_blend=(3.0, 1.0)))
    assert model.engine.calls == start + 3
    alone = compute_targets(model, content, [other], (48, 64), config)
    assert model.engine.calls == start + 3
    for name, gram in blended.grams.items():
        torch.testing.assert_close(gram, 0.75 * first.grams[name] + 0.25 * alone.grams[name])


def test_the_key_covers_size_scale_layers_pixels_and_model(model_path, images, tmp_path):
    content, style = images
    model = load_model(model_path, "cpu")
    start = model.engine.calls
    compute_targets(model, content, [style], (48, 64), Config())
    compute_targets(model, content, [style], (36, 48), Config())  # new size: both recomputed
    assert model.engine.calls == start + 4
    compute_targets(model, content, [style], (36, 48), Config(style_scale=0.5))  # style only
    assert model.engine.calls == start + 5
    changed = content.copy()
    changed[0, 0, 0] = 1 - changed[0, 0, 0]  # one pixel: a different image
    compute_targets(model, changed, [style], (36, 48), Config(style_scale=0.5))
    assert model.engine.calls == start + 6

    cache = TargetCache(model_path)
    image = array_hash(style)
    base = cache.key("gram", image, (48, 64), ("relu1_1",))
    assert base == TargetCache(model_path).key("gram", image, (48, 64), ("relu1_1",))
    other_model = tmp_path / "other.onnx"
    other_model.write_bytes(model_path.read_bytes()[:-1] + b"\0")  # one byte differs
    assert len({base,
                cache.key("gram", image, (48, 64), ("relu1_1", "relu2_1")),
                cache.key("gram", image, (48, 64), ("relu1_1",), style_scale=2.0),
                cache.key("features", image, (48, 64), ("relu1_1",)),
                TargetCache(other_model).key("gram", image, (48, 64), ("relu1_1",))}) == 5


@pytest.mark.parametrize("damage", [b"garbage, not an npz file", b"", "truncate"])
def test_a_corrupt_entry_is_ignored_and_rewritten(model_path, images, damage):
    content, style = images
    model = load_model(model_path, "cpu")
    good = compute_targets(model, content, [style], (48, 64), Config())
    for entry in entries():
        data = entry.read_bytes()
        entry.write_bytes(data[: len(data) // 2] if damage == "truncate" else damage)
    start = model.engine.calls
    again = compute_targets(model, content, [style], (48, 64), Config())
    assert model.engine.calls == start + 2  # both entries recomputed
    assert_same_targets(good, again)
    # ... and rewritten: the next run reads them again without any pass.
    compute_targets(model, content, [style], (48, 64), Config())
    assert model.engine.calls == start + 2
    for entry in entries():
        with np.load(entry) as data:
            assert len(data.files) >= 1


def test_an_unwritable_cache_only_costs_speed(model_path, images, monkeypatch, tmp_path):
    content, style = images
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("STYLEFU_CACHE", str(blocker))
    model = load_model(model_path, "cpu")
    start = model.engine.calls
    targets = compute_targets(model, content, [style], (48, 64), Config())
    assert targets.content.shape[1] == 512 and model.engine.calls == start + 2
    compute_targets(model, content, [style], (48, 64), Config())
    assert model.engine.calls == start + 4  # nothing cached, nothing failed


def _write_many(root, model_path, key, arrays, barrier, times, results):
    cache = TargetCache(model_path, root=root)
    barrier.wait()  # start together, so the writes really overlap
    results.put(all(cache.store(key, arrays) for _ in range(times)))


def test_two_processes_writing_the_same_entry_both_succeed(model_path, tmp_path):
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    rng = np.random.default_rng(0)
    # Big enough (about 4 MB) that writing takes long and the two writers overlap.
    arrays = {f"relu{i}_1": rng.random((1, 512, 512), dtype=np.float32) for i in range(1, 5)}
    cache = TargetCache(model_path, root=tmp_path)
    key = cache.key("gram", "same-image", (64, 64), tuple(arrays))
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_write_many,
                           args=(tmp_path, model_path, key, arrays, barrier, 10, results))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [results.get(timeout=5), results.get(timeout=5)] == [True, True]
    loaded = cache.load(key, tuple(arrays))
    assert loaded is not None
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded[name], value)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert leftovers == [] and len(list(tmp_path.rglob("*.npz"))) == 1


def test_the_cache_can_be_switched_off(model_path, images, monkeypatch):
    content, style = images
    monkeypatch.setenv("STYLEFU_NO_TARGET_CACHE", "1")
    model = load_model(model_path, "cpu")
    start = model.engine.calls
    for _ in range(2):
        compute_targets(model, content, [style], (48, 64), Config())
    assert model.engine.calls == start + 4 and entries() == []


def test_the_least_recently_used_entries_go_when_the_cache_is_full(model_path, tmp_path):
    cache = TargetCache(model_path, root=tmp_path, max_bytes=4_000_000)
    one_mb = {"relu1_1": np.ones((1, 512, 512), np.float32)}
    keys = [cache.key("gram", f"image {i}", (64, 64), ("relu1_1",)) for i in range(4)]
    for i, key in enumerate(keys[:3]):
        assert cache.store(key, one_mb)
        os.utime(cache.path(key), (1000 + i, 1000 + i))  # stored in order, seconds apart
    assert cache.load(keys[0], ("relu1_1",)) is not None  # used again: now the most recent
    cache.store(keys[3], one_mb)  # 4.2 MB > 4 MB: drop the least recently used (keys[1]) to get under 80 %
    present = [cache.path(k).exists() for k in keys]
    assert present == [True, False, True, True]


@pytest.mark.parametrize("value, limit_mb, ignored", [
    ("inf", 1e12, False), ("abc", MAX_BYTES / 1e6, True), ("-5", MAX_BYTES / 1e6, True),
    ("nan", MAX_BYTES / 1e6, True), ("150", 150, False)])
def test_cache_limit_from_the_environment(value, limit_mb, ignored, monkeypatch, capsys):
    """$STYLEFU_CACHE_MAX_MB: "inf" is no limit (it was an internal error), a value that is no
    number of MB is ignored and `stylefu cache status` says so (a negative one pruned all)."""
    from stylefu.core.cli.main import main

    monkeypatch.setenv("STYLEFU_CACHE_MAX_MB", value)
    assert cache_limit() == limit_mb * 1e6
    assert main(["cache", "status", "--json"]) == 0
    captured = capsys.readouterr()
    shown = None if value == "inf" else round(limit_mb, 1)  # not "of 1000000000000.0 MB"
    assert json.loads(captured.out)["limit_mb"] == shown
    assert ("is not a number of megabytes" in captured.err) == ignored
    assert main(["cache", "--json"]) == 0  # status is what `stylefu cache` alone shows
    assert capsys.readouterr().out == captured.out
    assert main(["cache"]) == 0
    assert ("MB no limit" in capsys.readouterr().out) == (value == "inf")


def test_cache_prune_says_its_figures_as_json_and_status_takes_no_limit(model_path, capsys):
    # `cache prune --json` printed no JSON, `cache status --max-mb 5` was taken and ignored, and
    # `--max-mb inf` was refused though $STYLEFU_CACHE_MAX_MB takes it
    from stylefu.core.cli.main import main

    cache = TargetCache(model_path, max_bytes=10**9)  # the user's cache (the test's own)
    assert cache.store(cache.key("gram", "an image", (64, 64), ("relu1_1",)),
                       {"relu1_1": np.ones((1000, 1000), np.float32)})
    assert main(["cache", "prune", "--json", "--max-mb", "inf"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["removed_files"] == 0 and figures["limit_mb"] is None
    assert main(["cache", "prune", "--json", "--max-mb", "0"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["removed_files"] == 1 and figures["freed_mb"] >= 4.0 and figures["limit_mb"] == 0
    assert main(["cache", "status", "--max-mb", "5"]) == 2
    assert "`cache status` takes none" in capsys.readouterr().err
