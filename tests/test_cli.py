"""The `stylefu` command: run with options, JSON progress, metrics, demo, and clean failures."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from stylefu.core.cli.main import build_parser, main
from stylefu.core.io.images import PILLOW_FORMATS, save_image

FAST = ["--size", "64", "--scales", "1", "--iterations", "4"]


@pytest.fixture
def files(tmp_path, images):
    content, style = images
    return (save_image(tmp_path / "content.png", content),
            save_image(tmp_path / "style.png", style))


@pytest.mark.filterwarnings("error:Config.save_every:UserWarning")  # the API's, not the CLI's
def test_run_json_progress_metrics_and_intermediates(files, model_path, tmp_path, capsys):
    content, style = files
    out = tmp_path / "out.png"
    code = main(["run", str(content), str(style), "-o", str(out), "--model", str(model_path),
                 "--progress", "json", "--metrics", str(tmp_path / "m.json"),
                 "--save-every", "2", "--seed", "3", *FAST])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [r for r in records if r["event"] == "progress"]
    assert [r["iteration"] for r in progress] == [1, 2, 3, 4] and progress[-1]["fraction"] == 1.0
    assert records[-1]["event"] == "result" and records[-1]["output"] == str(out)
    assert progress[1]["image"].endswith("out.scale1-0002.png")
    assert Image.open(progress[1]["image"]).size == (64, 48)
    assert Image.open(out).size == (64, 48)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["iterations"] == 4 and metrics["weights_source"] == "random (seed 0)"


def test_save_every_images_keep_the_contents_transparency(images, model_path, tmp_path, capsys):
    """--save-every's images look as the result will: with the content's alpha (they were
    opaque, showing what the transparent parts hide)."""
    content, style = images
    alpha = np.ones(content.shape[:2], np.float32)
    alpha[:, :20] = 0
    source = save_image(tmp_path / "cut.png", content, alpha)
    style_path = save_image(tmp_path / "style.png", style)
    out = tmp_path / "out.png"
    assert main(["run", str(source), str(style_path), "-o", str(out), "--model", str(model_path),
                 "--progress", "none", "--save-every", "2", *FAST]) == 0, capsys.readouterr().err
    final = np.asarray(Image.open(out))
    between = np.asarray(Image.open(tmp_path / "out.scale1-0002.png"))
    assert between.shape == final.shape == (48, 64, 4)
    assert np.array_equal(between[..., 3], final[..., 3]) and (final[:, :20, 3] == 0).all()


def test_run_names_device_and_random_weights(files, model_path, tmp_path, capsys):
    content, style = files
    assert main(["run", str(content), str(style), "-o", str(tmp_path / "o.png"), "--model",
                 str(model_path), "--progress", "none", *FAST]) == 0
    err = capsys.readouterr().err
    assert "device cpu" in err and "RANDOM weights" in err


def test_run_marks_a_note_to_act_on_as_a_warning(files, model_path, tmp_path, capsys,
                                                monkeypatch):
    """A note the user should act on (bf16 emulated on a CPU without AVX512-BF16 or AMX, about
    20x slower) looked like any note: "stylefu: this CPU ...", a `notice` record like the tiles'.
    On stderr it is "stylefu: warning: ..."; in JSON its record has "level": "warning" (the
    tiles' "info"), `message` unchanged for the plug-ins."""
    from stylefu.core.engines.torch import model

    monkeypatch.setattr(model, "cpu_has_fast_bf16", lambda: False)  # an AVX2-only CPU's answer
    content, style = files
    run = ["run", str(content), str(style), "-o", str(tmp_path / "o.png"), "--model",
           str(model_path), *FAST, "--engine", "torch", "--precision", "bf16", "--compile", "off",
           "--crop-side", "48"]
    assert main([*run, "--progress", "json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    notices = {r["level"]: r["message"] for r in records if r["event"] == "notice"}
    assert set(notices) == {"warning", "info"}, notices
    assert notices["warning"].startswith("this CPU has no AVX512-BF16 or AMX: bf16 is emulated")
    assert "px is optimised in 48 px tiles" in notices["info"]
    assert main([*run, "--progress", "none"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert f"stylefu: warning: {notices['warning']}" in lines
    assert f"stylefu: {notices['info']}" in lines  # information: no prefix


def test_quiet_run_and_preview_print_errors_only(files, model_path, tmp_path, capsys):
    content, style = files
    for command in (["run", "-o", str(tmp_path / "o.png")], ["preview", "-o", str(tmp_path / "s.png")]):
        assert main([command[0], str(content), str(style), *command[1:], "--model",
                     str(model_path), "-q", *FAST]) == 0
        assert capsys.readouterr().err == "", command  # no bar, engine line or summary
    assert main(["run", str(content), str(tmp_path / "none.png"), "-o", str(tmp_path / "o.png"),
                 "-q", "--model", str(model_path), *FAST]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("stylefu: error: ") and "none.png" in err[0]


def test_a_librarys_warning_is_the_commands_own_line_and_quiet_keeps_it_off(files, model_path,
                                                                          tmp_path):
    # Pillow's "Corrupt EXIF data" came as Python's two lines naming its source file, even
    # under -q ("errors only")
    from PIL import Image

    _, style = files
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(
        tmp_path / "exif.jpg", exif=b"Exif\0\0II*\0" + b"\xff" * 40)
    command = [sys.executable, "-m", "stylefu.core", "run", str(tmp_path / "exif.jpg"), str(style),
               "-o", str(tmp_path / "o.png"), "--model", str(model_path), "--progress", "none",
               *FAST]
    said = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert said.returncode == 0 and "stylefu: warning: Corrupt EXIF data" in said.stderr
    assert ".py:" not in said.stderr and "warnings.warn" not in said.stderr, said.stderr
    quiet = subprocess.run([*command, "-q"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_model_from_environment(files, model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("STYLEFU_MODEL", str(model_path))
    content, style = files
    assert main(["run", str(content), str(style), "-o", str(tmp_path / "o.png"),
                 "--progress", "none", *FAST]) == 0


def bad_cases(tmp_path, files, model_path):
    content, style = files
    (tmp_path / "notimage.png").write_text("text")
    save_image(tmp_path / "tiny.png", np.zeros((8, 8, 3), np.float32))
    (tmp_path / "fake.onnx").write_bytes(b"junk")
    m = ["--model", str(model_path)]
    return {
        "missing": ([str(tmp_path / "nope.png"), str(style)] + m, "does not exist"),
        "not image": ([str(tmp_path / "notimage.png"), str(style)] + m, "not an image"),
        "tiny": ([str(content), str(tmp_path / "tiny.png")] + m, "at least 16 px"),
        "model": ([str(content), str(style), "--model", str(tmp_path / "fake.onnx")],
                  "not a readable ONNX"),
        "no model": ([str(content), str(style), "--model", str(tmp_path / "none.onnx")],
                     "stylefu export"),
        "weight": ([str(content), str(style), "--style-weight", "-1"] + m,
                   "--style-weight must not be negative"),
        "size": ([str(content), str(style), "--size", "0"] + m, "--size"),
        "folder": ([str(content), str(style), "-o", str(tmp_path / "no" / "o.png")] + m, "Cannot write"),
        "blend": ([str(content), str(style), "--style-blend", "1,2"] + m, "2 weights for 1"),
        "tile": ([str(content), str(style), "--tile-size", "8"] + m, "at least 32 px, not 8"),
    }


@pytest.mark.parametrize("case", ["missing", "not image", "tiny", "model", "no model", "weight",
                                  "size", "folder", "blend", "tile"])
def test_user_errors_exit_2_without_output(case, files, model_path, tmp_path, capsys):
    args, message = bad_cases(tmp_path, files, model_path)[case]
    out = tmp_path / "out.png"
    if "-o" not in args:
        args += ["-o", str(out)]
    code = main(["run", *args, "--progress", "json", *FAST[2:]])
    captured = capsys.readouterr()
    assert code == 2
    assert message in captured.err and "Traceback" not in captured.err
    assert json.loads(captured.out.splitlines()[-1])["event"] == "error"
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_entry_points_and_help():
    help_text = subprocess.run([sys.executable, "-m", "stylefu.core", "run", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for option in ("--model", "--size", "--iterations", "--style-weight", "--content-weight",
                   "--tv-weight", "--optimizer", "--init", "--seed", "--device", "--progress",
                   "--metrics", "--save-every", "--preset"):
        assert option in help_text
    assert "--strength" in help_text and "default: 1e+06 in the plain loss" in help_text  # from Config


def test_serve_answers_runs_in_order_with_the_bytes_of_run(files, model_path, tmp_path):
    """`stylefu serve` (the GIMP dialog's kept worker): runs asked on stdin are answered in order
    with `run`'s records, the same bytes as `stylefu run` makes; a run cancelled before it starts
    is answered as cancelled; a bad line or option is one error record and the worker goes on;
    stdin closed, it exits 0 at once."""
    content, style = files
    common = [str(content), str(style), "--model", str(model_path), "--seed", "5", *FAST]
    assert main(["run", *common[:2], "-o", str(tmp_path / "alone.png"), *common[2:],
                 "--progress", "none"]) == 0
    requests = [{"id": 1, "run": [*common[:2], "-o", str(tmp_path / "one.png"), *common[2:]]},
                {"cancel": 2}, {"id": 2, "run": [*common[:2], "-o", str(tmp_path / "two.png"),
                                                 *common[2:]]},
                "not json", {"cancel": [1]},
                {"id": 3, "run": [*common, "-o", "x.png", "--no-such-option"]},
                {"id": 4, "run": [*common[:2], "-o", str(tmp_path / "four.png"), *common[2:]]}]
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    # --model: loaded before any request comes (a file that cannot load fails only its runs).
    proc = subprocess.Popen([sys.executable, "-m", "stylefu.core", "serve", "--model",
                             str(model_path)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    proc.stdin.write(lines)
    proc.stdin.flush()
    lines = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    records = []
    while sum(r["event"] in ("result", "error", "cancelled") for r in records) < 6:
        records.append(json.loads(lines.get(timeout=120)))  # (a missing answer fails, not hangs)
    # A cancel of a finished run does nothing (it cancelled any later request with that id) and
    # JSON's true is no id (Python takes it for 1).
    again = {"id": 1, "run": [*common[:2], "-o", str(tmp_path / "five.png"), *common[2:]]}
    proc.stdin.write('{"cancel": 1}\n{"cancel": true}\n' + json.dumps(again) + "\n")
    proc.stdin.flush()
    while sum(r["event"] in ("result", "error", "cancelled") for r in records) < 8:
        records.append(json.loads(lines.get(timeout=120)))  # (a missing answer fails, not hangs)
    proc.stdin.write('{"id": 6, "run": []}')  # a last line without its newline: answered too
    proc.stdin.close()  # stdin's end: the worker exits, what is left cancelled
    assert proc.wait(timeout=30) == 0
    reader.join(timeout=30)  # stdout's end
    while not lines.empty():
        records.append(json.loads(lines.get()))
    answers = [(r.get("id"), r["event"]) for r in records if r["event"] != "progress"]
    assert answers == [(1, "started"), (None, "result"), (2, "started"), (None, "cancelled"),
                       (None, "started"), (None, "error"), (None, "started"), (None, "error"),
                       (3, "started"), (None, "error"), (4, "started"), (None, "result"),
                       (None, "started"), (None, "error"), (1, "started"), (None, "result"),
                       (6, "started"), (None, "cancelled")]
    assert "--no-such-option" in [r for r in records if r["event"] == "error"][2]["message"]
    # The worker's start is kept once as a run's start-up; its runs keep their speeds only.
    from stylefu.core.run import eta
    (entry,) = [e for e in eta.load_speeds().values() if e.get("points")]
    assert len(entry["fixed_seconds"]) == 2  # `alone`'s, then the worker's
    assert len(entry["points"]) == 4  # `alone`'s, one's, four's and five's single level
    alone = (tmp_path / "alone.png").read_bytes()
    assert (tmp_path / "one.png").read_bytes() == alone == (tmp_path / "four.png").read_bytes() \
        == (tmp_path / "five.png").read_bytes()
    assert not (tmp_path / "two.png").exists()


def test_serve_help_requests_keep_stdout_json():
    """A request asking for help (argparse would print it to stdout) is one error record: every
    line the worker writes stays JSON."""
    requests = [{"id": 1, "run": ["--help"]}, {"id": 2, "estimate": ["--hel"]},
                {"id": 3, "run": ["a.png", "b.png", "-o", "c.png", "-h"]},
                {"id": 4, "run": ["a.png", "b.png", "-o", "c.png", "-qh"]}]
    lines = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([sys.executable, "-m", "stylefu.core", "serve"], input=lines, text=True,
                          capture_output=True, timeout=60)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["event"] for r in records] == ["started", "error"] * 4
    assert all("stylefu run --help" in r["message"] or "stylefu estimate --help" in r["message"]
               for r in records[1::2])


def test_serve_reads_help_and_version_as_each_command_does():
    """`--v` and `--ve` (abbreviations of the top level's --version, which `run` and `estimate`
    lack) were taken for help: "a request cannot ask for help" instead of the command's own
    "unrecognized arguments" sentence. Help is what the command's Parser.spelling reads as
    --help (`--he` still is)."""
    requests = [{"id": 1, "run": ["a.png", "b.png", "-o", "c.png", "--v"]},
                {"id": 2, "estimate": ["--layer", "9x9", "--ve"]},
                {"id": 3, "run": ["a.png", "b.png", "-o", "c.png", "--version"]},
                {"id": 4, "estimate": ["--he"]}]
    worker = subprocess.Popen([sys.executable, "-m", "stylefu.core", "serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:  # stdin open until every answer is in: runs queued behind its end are cancelled
        worker.stdin.write("".join(json.dumps(r) + "\n" for r in requests))
        worker.stdin.flush()
        records = [json.loads(worker.stdout.readline()) for _ in range(8)]
    finally:
        worker.communicate(timeout=60)  # stdin closed: the worker exits
    assert [r["event"] for r in records] == ["started", "error"] * 4
    messages = [r["message"] for r in records[1::2]]
    for message, word, command in zip(messages, ["--v", "--ve", "--version"],
                                      ["run", "estimate", "run"]):
        assert f"unrecognized arguments: {word}" in message, message
        assert f"(see `stylefu {command} --help`)" in message
    assert "cannot ask for help" in messages[3]


@pytest.mark.parametrize("command", [["run", "c.png", "s.png", "-o", "o.png"], ["preview", "c.png",
                                     "s.png", "-o", "o.png"], ["batch", "d", "--style", "s.png",
                                     "-o", "out"], ["estimate", "--layer", "9x9"], ["info"]])
def test_unknown_option_points_to_its_commands_help(command, capsys):
    assert main([*command, "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no-such-option" in err
    assert f"(see `stylefu {command[0]} --help`)" in err and "Traceback" not in err


def abbreviated(option: str, commands) -> list[list[str]]:
    """`option`'s shortest abbreviation that `run` takes (argparse's allow_abbrev) and that
    starts none of `batch`'s options, as [word, value] and word=value; none where there is none."""
    for end in range(3, len(option)):
        word = option[:end]
        if commands["run"].spelling(word) == option and \
                not any(o.startswith(word) for o in commands["batch"].option_words):
            return [[word, "2"], [f"{word}=2"]]
    return []


def test_batch_names_each_run_option_it_does_not_take_with_why(files, tmp_path, capsys):
    """`run --save-every` (or --metrics, --watch-stdin) given to batch was argparse's bare
    "unrecognized arguments": every `run` option batch lacks is one sentence saying why (a batch
    writes only each item's result and manifest line) and what to do, exit 2, nothing made; an
    abbreviation `run` takes (`--save-ev`) too, which was still the bare "unrecognized"."""
    commands = build_parser().commands
    left_out = sorted(commands["run"].option_words - commands["batch"].option_words)
    assert "--save-every" in left_out and "--mask-inverse" not in left_out  # that one batch takes
    content, style = files
    out = tmp_path / "out"
    for option in left_out:
        for given in ([option, "2"], [f"{option}=2"], *abbreviated(option, commands)):
            assert main(["batch", str(content), "--style", str(style), "-o", str(out),
                         *given]) == 2
            err = capsys.readouterr().err
            assert f"`stylefu batch` does not take {option}: a batch writes only each item's " \
                   f"result" in err and f"`stylefu run ... {option}`" in err, err
            assert "unrecognized" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    args = build_parser().parse_args(["batch", "d", "--style", "s.png", "-o", "o", "--mask",
                                      "a.png", "--mask-inverse", "b.png"])
    assert [getattr(m, "source", m) for m in args.masks] == ["a.png", "b.png"]
    assert type(args.masks[1]).__name__ == "Inverse"


@pytest.mark.parametrize("args, message", [
    (["--layer", "10x10"], "content is 10x10 px"),
    (["--layer", "4000x20", "--size", "128"], "use --size 3100 or more"),
    (["--layer", "3000x2000", "--size", "99999"], "enough for --size"),
    (["--layer", "10000x12000", "--size", "64"], "too large (89478485 pixels at most)"),
])
def test_estimate_refuses_what_run_refuses(args, message, files, tmp_path, capsys):
    """An estimate never prices a run that would be refused (the same sentence as `run`), and the
    content and --layer together are refused rather than one silently winning. `run`'s content
    and styles work as they are: the styles are read and checked as `run` checks them."""
    assert main(["estimate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert main(["estimate", str(files[0]), "--layer", "300x200"]) == 2
    assert "not both" in capsys.readouterr().err
    content, style = map(str, files)
    clear = save_image(tmp_path / "clear.png", np.ones((48, 64, 3), np.float32),
                       np.zeros((48, 64), np.float32))
    for styles, said in (([style, str(tmp_path / "none.png")], "does not exist"),
                         ([str(clear)], "style 1 is transparent everywhere"),
                         ([style], "makes style 1 ")):
        assert main(["estimate", content, *styles, "--size", "4000", "--style-scale", "8"]) == 2
        assert said in capsys.readouterr().err, styles
    assert build_parser().parse_args(["estimate", content, style, style]).styles == [style, style]


def test_engine_help_says_what_auto_does():
    """--engine's help (also the GIMP dialog's) says what resolve_engine does: auto is torch
    wherever torch is installed, and it does not deny the torch-free engine's tiles."""
    from stylefu.core.engines import resolve_engine
    from stylefu.core.method.config import config_fields

    (engine,) = [f for f in config_fields() if f.name == "engine"]
    text = engine.metadata["help"]
    assert resolve_engine("auto") == "torch" and "torch wherever it is installed" in text
    assert "no tiles" not in text  # engines/onnx/tiled.py


@pytest.mark.parametrize("suffix", [".jpg", ".webp", ".bmp", pytest.param(".avif", marks=pytest.mark.skipif(
    ".avif" not in PILLOW_FORMATS, reason="this Pillow writes no AVIF"))])
def test_16_bits_into_an_8_bit_format_is_refused_before_the_run(suffix, files, model_path,
                                                                 tmp_path, capsys):
    """--bits 16 with .jpg/.webp/.bmp would silently write 8 bits: refused before any work, in
    run and batch alike (a .png/.tif/.npy result keeps them)."""
    content, style = files
    out = tmp_path / f"o{suffix}"
    assert main(["run", str(content), str(style), "-o", str(out), "--bits", "16",
                 "--model", str(model_path), *FAST]) == 2
    assert "--bits 16 needs a .png or .tif output" in capsys.readouterr().err
    assert main(["batch", str(content), "--style", str(style), "-o", str(tmp_path / "b"),
                 "--name", "{stem}" + suffix, "--bits", "16", "--model", str(model_path),
                 *FAST]) == 2
    assert "--bits 16 needs" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "b").exists()


def test_output_help_names_every_format_written():
    from stylefu.core.io.images import OUTPUT_SUFFIXES, PILLOW_FORMATS

    commands = build_parser().commands
    run_help = " ".join(commands["run"].format_help().split())
    sheet_help = " ".join(commands["preview"].format_help().split())
    for suffix in set(OUTPUT_SUFFIXES) - {".jpeg", ".tiff"}:
        assert suffix in run_help
    for suffix in set(PILLOW_FORMATS) - {".jpeg", ".tiff"}:
        assert suffix in sheet_help


@pytest.mark.parametrize("option, given", [("--style-blend", ["--style-blend", "0.7,0.3"]),
                                           ("--save-every", ["--save-every", "5"]),
                                           ("--style-blend", ["--style-bl", "0.7,0.3"]),
                                           ("--save-every", ["--save-ev=5"])])
def test_preview_refuses_options_it_would_ignore(option, given, files, tmp_path, capsys):
    """preview paints each style alone and writes only its sheet: a blend or --save-every would
    be silently ignored, so they are not its options, refused with why (not argparse's bare
    "unrecognized arguments"), abbreviated as `run` takes them too."""
    content, style = files
    assert main(["preview", str(content), str(style), str(style), "-o",
                 str(tmp_path / "s.png"), *given]) == 2
    err = capsys.readouterr().err
    assert f"`stylefu preview` does not take {option}: it paints each style alone" in err
    assert f"`stylefu run ... {option}`" in err and len(err.strip().splitlines()) == 1
    assert option not in build_parser().commands["preview"].format_help()


@pytest.mark.parametrize("given", [["--progress", "json"], ["--prog", "json"], ["--progr=json"]])
def test_an_argument_error_is_a_json_event_however_progress_json_is_spelled(given, capsys):
    """An abbreviation of --progress (which argparse takes) asks for JSON as the full spelling
    does: the argument error was a bare line on stderr, no JSON `error` event on stdout."""
    assert main(["run", "c.png", "s.png", "-o", "o.png", *given, "--no-such-option"]) == 2
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["event"] == "error" and "--no-such-option" in record["message"]


def test_parser_reads_abbreviations_as_argparse_does():
    """`spelling` (the public stand-in for argparse's private option table) resolves a word as
    argparse does: in full, a unique abbreviation, and None for none or several."""
    run = build_parser().commands["run"]
    assert run.spelling("--save-every") == "--save-every" == run.spelling("--save-ev=3")
    assert run.spelling("-o") == "-o" and run.spelling("--no-such") is None
    ambiguous = "--s"  # --size, --seed, --save-every, ...
    assert run.spelling(ambiguous) is None
    with pytest.raises(Exception, match="ambiguous option"):
        run.parse_args(["c.png", "s.png", "-o", "o.png", ambiguous, "3"])
    assert vars(run.parse_args(["c.png", "s.png", "-o", "o.png", "--save-ev", "3"]))[
        "save_every"] == 3


def test_parser_reads_short_option_clusters_as_argparse_does(capsys):
    """`-qh` is -q then -h (help, as `stylefu run -qh` prints it), `-oh` is -o with the value h;
    `stylefu serve` takes a request as asking for help exactly when the command would print it."""
    from stylefu.core.cli.serve import asks_for_help

    run = build_parser().commands["run"]
    assert run.short_options("-qh") == ["-q", "-h"] and run.short_options("-oh") == ["-o"]
    assert run.short_options("-h") == ["-h"] and run.short_options("--quiet") == []
    assert run.short_options("-xh") == []  # no -x: argparse refuses the word
    with pytest.raises(SystemExit):
        run.parse_args(["c.png", "s.png", "-o", "o.png", "-qh"])
    assert "usage:" in capsys.readouterr().out
    assert vars(run.parse_args(["c.png", "s.png", "-oh"]))["output"] == "h"
    assert asks_for_help(["c.png", "s.png", "-o", "o.png", "-qh"], run)
    assert not asks_for_help(["c.png", "s.png", "-oh"], run)


def test_info_with_a_wrong_model_path_says_so(tmp_path, capsys):
    """`stylefu info --model PATH` with nothing (or a folder) there names the path and what to
    do, instead of "none installed" (which hides a typo)."""
    missing = tmp_path / "typo.onnx"
    assert main(["info", "--model", str(missing), "--json"]) == 0
    weights = json.loads(capsys.readouterr().out)["weights"]
    assert "is not there" in weights and f"stylefu export --weights auto -o {missing}" in weights
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    assert "is a folder, not a model file" in json.loads(capsys.readouterr().out)["weights"]


def test_info_says_what_precision_auto_takes_here(tmp_path, capsys):
    """A slow laptop's user asks why: `stylefu info` says what `--precision auto` computes in on
    this CPU, as the runs resolve it, and an AVX2-only CPU's float32 with the reason."""
    import torch

    from stylefu.core.engines.torch.model import resolve_precision

    assert main(["info", "--model", str(tmp_path / "none.onnx"), "--json"]) == 0
    taken = {torch.bfloat16: "bf16", torch.float32: "fp32"}[resolve_precision("auto", torch.device("cpu"))]
    precision = json.loads(capsys.readouterr().out)["precision"]
    assert precision.startswith(f"auto is {taken} on cpu"), precision
    avx2 = subprocess.run([sys.executable, "-m", "stylefu.core", "info", "--json"], text=True,
                          capture_output=True, timeout=120, check=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert json.loads(avx2.stdout)["precision"].startswith(
        "auto is fp32 on cpu (no AVX512-BF16 or AMX: bf16 would be emulated"), avx2.stdout


def test_progress_bar_leaves_no_stale_characters(monkeypatch):
    """On a terminal the bar rewrites its line after a carriage return: a shorter line (the loss
    losing digits, "about 1 min 05 s" becoming "about 59 s") is padded over the longer one."""
    import io

    from stylefu.core.cli.main import ProgressPrinter
    from stylefu.core.run.pipeline import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    lefts = iter([65.0, 59.0])
    printer = ProgressPrinter("bar", time_left=lambda p: next(lefts))
    for evaluation, loss in ((1, 0.123456), (2, 0.5)):
        printer(Progress(1, 1, evaluation, 10, (48, 64), loss, 0.0, 0.0, 0.0))
    visible = list(screen.getvalue().split("\r")[1])
    for i, char in enumerate(screen.getvalue().split("\r")[2]):  # the terminal overwrites in place
        visible[i:i + 1] = [char]
    assert "".join(visible).rstrip().endswith("loss 0.5, about 59 s left")


def test_intermediate_images_take_a_bounded_share_of_the_run(monkeypatch, tmp_path):
    """--save-every on a huge layer (hundreds of MB an image) would cost more than the painting:
    an image is written every N evaluations only while writing them takes at most SAVE_SHARE of
    the time, and as often as asked where writing is quick."""
    from stylefu.core.cli.main import SAVE_SHARE, ProgressPrinter
    from stylefu.core.run.pipeline import Progress

    now = [0.0]
    for write_seconds, expected in ((0.001, list(range(2, 41, 2))), (0.1, [2, 12, 22, 32])):
        written = []

        def save(path, *args, written=written, write_seconds=write_seconds):
            written.append(int(str(path).rsplit("-", 1)[1].split(".")[0]))
            now[0] += write_seconds

        monkeypatch.setattr("stylefu.core.io.images.save_image", save)
        printer = ProgressPrinter("none", save_every=2, output=tmp_path / "o.png",
                                      clock=lambda: now[0])
        for evaluation in range(1, 41):
            now[0] += 0.1  # an evaluation
            printer(Progress(1, 1, evaluation, 40, (48, 64), 1.0, 0.0, 0.0, 0.0,
                             image=lambda: np.zeros((48, 64, 3), np.float32)))
        assert written == expected, write_seconds
        assert SAVE_SHARE == 0.1


@pytest.mark.parametrize("command", ["run", "preview"])
def test_positional_arguments_are_explained(command):
    """`stylefu run --help` says what content and style are (they were bare names)."""
    text = build_parser().commands[command].format_help()
    positional = text.split("positional arguments:")[1].split("options:")[0]
    lines = [line.split() for line in positional.strip().splitlines()]
    assert lines[0][0] == "content" and len(lines[0]) > 1
    assert any(line[0] == "style" and len(line) > 1 for line in lines)


@pytest.mark.parametrize("option, message", [(["--style-blend", "0.7"], "1 weights for 2 styles"),
                                             (["--mask", "M", "--mask", "M", "--mask", "M"],
                                              "3 masks for 2 styles")])
def test_counts_refused_before_the_model_loads(option, message, files, model_path, tmp_path,
                                                capsys):
    """A --style-blend or --mask count that does not fit the styles is refused with the files'
    checks, before the model loads: stderr is the one error line, no "engine ..." line first."""
    content, style = files
    option = [str(content) if a == "M" else a for a in option]
    assert main(["run", str(content), str(style), str(style), "-o", str(tmp_path / "o.png"),
                 "--model", str(model_path), *option, *FAST]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("stylefu: error: ") and message in line


def test_metrics_named_as_a_save_every_image_is_refused(files, tmp_path, capsys):
    # --save-every 1 wrote its first image over the --metrics file, or the JSON over the image
    content, style = files
    assert main(["run", str(content), str(style), "-o", str(tmp_path / "o.png"), "--save-every",
                 "1", "--metrics", str(tmp_path / "o.scale1-0001.png"), "--model",
                 str(tmp_path / "no-model.onnx")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"stylefu: error: --metrics {tmp_path / 'o.scale1-0001.png'} is named as a "
                    "--save-every image; give it its own name.")


@pytest.mark.parametrize("case, message", [
    ("tiny content", "at least 16 px"), ("tiny style", "at least 16 px"),
    ("mask aspect", "give a mask with the content's aspect ratio"),
    ("black mask", "black everywhere"), ("thin at --size", "use --size"),
    ("clear content", "transparent everywhere, so its result would be invisible"),
    ("clear style", "transparent everywhere: it has no pixels"),
    ("init no image", "not an image"), ("init tiny", "at least 16 px"),
    ("memory", "even in crops"), ("onnx precision", "--engine onnx computes in float32"),
    ("webp too large", "a .webp picture is at most 16383 px on a side"),
    ("fp16 on a CPU", "--precision fp16 needs a CUDA device")])
def test_input_errors_come_before_the_model_loads(case, message, files, tmp_path, capsys):
    """What the inputs alone refuse is said before the model loads: with no model at --model
    the input's own sentence comes (not "No model at"), alone, with no engine line before it."""
    content, style = files
    save_image(tmp_path / "tiny.png", np.zeros((8, 40, 3), np.float32))
    save_image(tmp_path / "wide.png", np.ones((48, 200, 3), np.float32))
    save_image(tmp_path / "black.png", np.zeros((48, 64, 3), np.float32))
    save_image(tmp_path / "strip.png", np.ones((20, 400, 3), np.float32))
    save_image(tmp_path / "long.png", np.ones((32, 16400, 3), np.float32))
    save_image(tmp_path / "clear.png", np.ones((48, 64, 3), np.float32), np.zeros((48, 64), np.float32))
    (tmp_path / "init.png").write_text("text")
    args = {"tiny content": [tmp_path / "tiny.png", style],
            "tiny style": [content, tmp_path / "tiny.png"],
            "mask aspect": [content, style, "--mask", tmp_path / "wide.png"],
            "black mask": [content, style, "--mask", tmp_path / "black.png"],
            "thin at --size": [tmp_path / "strip.png", style, "--size", "64"],
            "clear content": [tmp_path / "clear.png", style],
            "clear style": [content, tmp_path / "clear.png"],
            "init no image": [content, style, "--init", tmp_path / "init.png"],
            "init tiny": [content, style, "--init", tmp_path / "tiny.png"],
            "fp16 on a CPU": [content, style, "--precision", "fp16", "--device", "cpu"],
            "webp too large": [tmp_path / "long.png", style, "--keep-size", "--size", "16000",
                               "--style-scale", "0.05"],
            "memory": [content, style, "--size", "2000000", "--device", "cpu"],
            "onnx precision": [content, style, "--engine", "onnx", "--precision", "bf16"]}[case]
    output = tmp_path / ("o.webp" if case == "webp too large" else "o.png")
    assert main(["run", *map(str, args), "-o", str(output), "--model",
                 str(tmp_path / "no-model.onnx")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("stylefu: error: ") and message in line
    if case == "tiny content":  # preview too
        assert main(["preview", *map(str, args), "-o", str(tmp_path / "sheet.png"), "--model",
                     str(tmp_path / "no-model.onnx")]) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("stylefu: error: ") and message in line


def test_transparency_into_a_jpeg_is_said(images, model_path, tmp_path, capsys):
    """A content with transparent parts written as .jpg (no alpha channel) gets one line saying
    they become opaque and which formats keep them; an opaque content or a .png gets none."""
    content, style = images
    alpha = np.ones(content.shape[:2], np.float32)
    alpha[:, :20] = 0
    clear = save_image(tmp_path / "clear.png", content, alpha)
    plain = save_image(tmp_path / "plain.png", content)
    style_path = save_image(tmp_path / "style.png", style)
    for source, suffix, said in ((clear, ".jpg", True), (clear, ".png", False),
                                 (plain, ".jpg", False)):
        assert main(["run", str(source), str(style_path), "-o", str(tmp_path / f"o{suffix}"),
                     "--model", str(model_path), "--progress", "none", *FAST]) == 0
        assert ("become opaque" in capsys.readouterr().err) == said


def test_every_option_and_argument_has_help():
    """Each command's options and arguments say what they do (info's --model and --json and
    cache's action were bare names). Parser.arguments holds every one: each option the usage
    line shows is among those kept."""
    for name, command in build_parser().commands.items():
        shown = set(re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", command.format_usage()))
        assert shown and shown <= command.option_words, (name, shown - command.option_words)
        for action in command.arguments:
            assert action.help, f"stylefu {name} {action.option_strings or action.dest}"


@pytest.mark.parametrize("command", ["run", "estimate", "batch"])
def test_upscale_without_keep_size_is_refused(command, files, tmp_path, capsys):
    """--upscale only chooses how --keep-size reaches the content's size: alone it would change
    nothing, so run, estimate and batch refuse it in one sentence (no model needed to say so)."""
    content, style = files
    args = {"run": ["run", str(content), str(style), "-o", str(tmp_path / "o.png")],
            "estimate": ["estimate", str(content)],
            "batch": ["batch", str(content), "--style", str(style), "-o", str(tmp_path / "b")]}
    assert main([*args[command], "--upscale", "stretch", *FAST]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--upscale stretch chooses how --keep-size" in line
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "b").exists()


def test_a_named_command_is_the_stylefu_the_user_typed(tmp_path):
    """A virtual environment not activated (`make demo`'s `.venv`): "run `stylefu export ...`"
    named a command the shell does not find; now the script as it was started. Where PATH finds
    that script, `stylefu` as before."""
    from PIL import Image

    for name in ("c.png", "s.png"):
        Image.new("RGB", (32, 32), "white").save(tmp_path / name)
    script = os.path.join(os.path.dirname(sys.executable), "stylefu")
    args = [script, "run", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--model",
            str(tmp_path / "none.onnx")]
    bare = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    for path, named in (("/usr/bin:/bin", script), (os.path.dirname(script), "stylefu")):
        done = subprocess.run(args, capture_output=True, text=True, env=dict(bare, PATH=path),
                              cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"create one with `{named} export --weights auto`" in done.stderr, done.stderr
