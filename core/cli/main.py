"""The `stylefu` command: run, batch, preview and info here; other packages add theirs (export,
demo, gimp) through the "stylefu.commands" entry point group, so core imports neither of them.

Every `run` option is generated from the Config dataclass, so defaults and help live in one place.
Exit codes: 0 done, 1 internal error (a bug: traceback shown), 2 user error (one sentence on
stderr: bad option, file or environment), 130 SIGINT, 141 the reader of stdout went away (a
broken pipe: one line on stderr), 143 SIGTERM; a signal once the output is in place comes too
late (exits.cancel_until_done). With `--progress json` the last line on stdout is always a
`result`, `error` or `cancelled` event. Commands import torch, ONNX Runtime and the pipeline
inside their functions: `--help` starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import functools
import glob
import os
import signal
import sys
import threading
import time
import types
import typing
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from .. import jsontext, notes
from ..errors import Cancelled, UserError
from ..method.config import PRESETS, Config, config_fields
from .bar import bar_line, clear_line, columns
from .exits import (
    EXIT_BROKEN_PIPE,
    EXIT_CANCELLED,
    EXIT_INTERNAL_ERROR,
    EXIT_TERMINATED,
    EXIT_USER_ERROR,
    Terminated,
    ended_if_stuck,
    finished_once,
    signals_cancel_until_done,
    signals_noted,
    stuck_exit_code,
)


class UsageError(UserError):
    """A command line argparse rejects (unknown option, a word where a number goes)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors: one line (and a JSON `error` event), exit code 2;
    it keeps its arguments (`arguments`) and option spellings (`option_words`): argparse's own
    table is private."""

    def __init__(self, *args, **kwargs):
        self.arguments: list[argparse.Action] = []  # before argparse's __init__ adds -h/--help
        self.option_words: set[str] = set()
        self.flag_words: set[str] = set()  # those that take no value (-q, -h)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        return self.keep(super().add_argument(*args, **kwargs))

    def keep(self, action: argparse.Action) -> argparse.Action:
        """`action` and its spellings kept (an argument group's options are added through here)."""
        self.arguments.append(action)
        self.option_words.update(action.option_strings)
        if action.nargs == 0:
            self.flag_words.update(action.option_strings)
        return action

    def spelling(self, word: str) -> str | None:
        """The option `word` (`--opt` or `--opt=value`) names here, read as argparse reads it:
        itself, or the one long option it abbreviates; None for none, or several."""
        word = word.split("=", 1)[0]
        if word in self.option_words or not word.startswith("--") or not self.allow_abbrev:
            return word if word in self.option_words else None
        found = [option for option in self.option_words if option.startswith(word)]
        return found[0] if len(found) == 1 else None

    def short_options(self, word: str) -> list[str]:
        """The short options a word such as `-qh` names, in order, as argparse reads a cluster:
        each flag's letter is followed by the next option's, one that takes a value ends it (the
        rest is its value), so does a letter that is no option here."""
        if not word.startswith("-") or word.startswith("--"):
            return []
        named = []
        for letter in word[1:]:
            option = "-" + letter
            if option not in self.option_words:
                break
            named.append(option)
            if option not in self.flag_words:
                break
        return named

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`).")


STARTED = time.perf_counter()  # the command's start, for the fixed seconds run/eta.py keeps
COMMANDS_GROUP = "stylefu.commands"  # entry points: callables add_parser(subparsers)


def _inverse_mask(path: str):
    """--mask-inverse's value: guides.Inverse(path) (imported on use: guides loads torch)."""
    from ..method.guides import Inverse

    return Inverse(path)


def _parse_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


@functools.cache
def _config_hints() -> dict:
    return typing.get_type_hints(Config)  # once, not per option (50 ms of start-up)


def _field_type(f: dataclasses.Field):
    if "spellings" in f.metadata:  # before argparse checks the choices
        return lambda text: f.metadata["spellings"].get(text.lower(), text.lower())
    hint = _config_hints()[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is tuple or (args and typing.get_origin(args[0]) is tuple):
        return _parse_floats
    base = args[0] if args and (typing.get_origin(hint) in (typing.Union, types.UnionType)) else hint
    return base if base in (int, float, str) else str


def add_config_options(parser: Parser, skip=(), defaults=None) -> None:
    """One option per Config field: --field-name, with the field's default and help.

    `defaults` overrides some fields' defaults for one command (e.g. preview's size and preset).
    """
    group = parser.add_argument_group("stylization options (defaults from stylefu.core.Config)")
    defaults = defaults or {}
    for f in config_fields():
        if f.name in skip:
            continue
        default = defaults.get(f.name, f.default)
        preset_field = any(f.name in values for values in PRESETS.values())
        shown = default if default is not None else "the preset's" if preset_field else "none"
        parser.keep(group.add_argument(
            "--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()), dest=f.name,
            type=_field_type(f), default=default, choices=f.metadata.get("choices"),
            help=f.metadata["help"] if "(default:" in f.metadata["help"]
            else f"{f.metadata['help']} [default: {shown}]"))


def config_from_args(args: argparse.Namespace) -> Config:
    values = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    return Config(**values)


QUIET_HELP = "print errors only (no progress bar, notices or summary line)"
WATCH_STDIN_HELP = "stop when stdin closes (used by the GIMP plug-ins)"
_said = {"quiet": False}  # -q/--quiet: `say` keeps to errors (`always`)


@functools.cache
def typed_stylefu() -> str:
    """How this user types the `stylefu` running now: `stylefu` where PATH finds this script,
    else the script as it was started (a virtual environment not activated: after `make demo`,
    `.venv/bin/stylefu`); `stylefu` too under `python -m` and in a script (the API)."""
    import shlex
    import shutil
    import subprocess

    script = sys.argv[0] if sys.argv else ""
    if os.path.splitext(os.path.basename(script))[0] != "stylefu":
        return "stylefu"
    found = shutil.which("stylefu")
    with contextlib.suppress(OSError):
        if found and os.path.samefile(found, script):
            return "stylefu"
    return subprocess.list2cmdline([script]) if os.name == "nt" else shlex.quote(script)


def as_typed(text: str) -> str:
    """`text` with each "`stylefu ..." it names as this user types stylefu (typed_stylefu)."""
    head = typed_stylefu()
    return text if head == "stylefu" else text.replace("`stylefu ", f"`{head} ")


def say(text: str, always: bool = False) -> None:
    """One line for the user, on stderr (stdout carries JSON progress); none if stderr is gone,
    nor under --quiet unless `always` (errors, and how a run ended early). The stylefu commands
    it names are as this user can type them (typed_stylefu)."""
    if _said["quiet"] and not always:
        return
    text = as_typed(text)
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # its reader went away, or it was closed
        pass


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's Python warning (Pillow's "Corrupt EXIF data", ...) as the command's own
    warning line, which --quiet keeps off, not Python's two lines naming its source file."""
    say(f"stylefu: warning: {str(message).strip()}")


def _open_standard_streams() -> None:
    """A closed stdin, stdout or stderr (`2>&-`) becomes /dev/null: else a file opened later takes
    its number and a library's log line lands in it, and print(file=None) writes to stdout."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name in ("stdin", "stdout", "stderr"):
        if getattr(sys, name) is None:  # Python found the descriptor closed at start-up
            setattr(sys, name, open(os.devnull, "r" if name == "stdin" else "w"))


def _stdout_escapes() -> None:
    """stdout writes what its encoding lacks as \\u escapes: on Windows a pipe or file gets the
    ANSI code page (cp1252...), where a path with other letters (a user's name, an image's)
    made print() raise."""
    with contextlib.suppress(AttributeError, ValueError):
        if sys.stdout.errors == "strict":
            sys.stdout.reconfigure(errors="backslashreplace")


def _stdout_gone(exc: OSError) -> bool:
    """Whether `exc` is the broken pipe of stdout, whose reader went away (`| head -1`)."""
    if not isinstance(exc, BrokenPipeError) or exc.filename:
        return False
    try:
        import select

        poller = select.poll()
    except AttributeError:  # no poll (Windows): a broken pipe without a file name is stdout's
        return True
    try:
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout is no descriptor: the pipe was another's
        return False


def weights_note(info) -> str:
    """The artifact's weights for a log line (`info`: an ArtifactInfo), flagging random ones."""
    if info.is_random:
        return (f"{info.weights_source}: RANDOM weights, a weak effect; run `stylefu export "
                "--weights auto` for trained ones")
    return info.weights_source


# --save-every images take at most this share of a run: past it (a 24 MP layer's live previews
# with --keep-size, hundreds of MB each) an image falls due only once the time since the last
# one's end is (1 - share) / share times what writing it took.
SAVE_SHARE = 0.1


class ProgressPrinter:
    """Progress as a bar on stderr (`bar`), JSON lines on stdout (`json`) or nothing (`none`)."""

    def __init__(self, mode: str, save_every: int = 0, output: Path | None = None, content=None,
                 keep_size: bool = False, time_left=None, clock=time.perf_counter):
        self.mode, self.save_every, self.output = mode, save_every, output
        self.content, self.keep_size = content, keep_size  # what --save-every's images match
        self.bar = mode == "bar" and sys.stderr.isatty()
        self.time_left = time_left  # an eta.TimeLeft, or None
        self.width = 0  # the bar's last line: a shorter one is padded over it
        self.clock, self.next_save = clock, 0.0  # when an image may be written again (SAVE_SHARE)

    def emit(self, record: dict) -> None:
        if self.mode == "json":
            jsontext.print_line(record)

    def __call__(self, p) -> None:
        saved = None
        left = self.time_left(p) if self.time_left is not None else None
        due = self.save_every and self.output and p.evaluation % self.save_every == 0
        started = self.clock() if due else 0.0
        if due and started >= self.next_save:
            from ..io.images import save_image
            saved = self.output.with_name(
                f"{self.output.stem}.scale{p.level}-{p.evaluation:04d}{self.output.suffix}")
            save_image(saved, *_at_size(p.image(), self.content, self.keep_size))
            ended = self.clock()
            self.next_save = ended + (ended - started) * (1 - SAVE_SHARE) / SAVE_SHARE
        if self.mode == "json":
            # "stage", "scale(s)" and "iteration(s)" are the names plug-ins already installed read.
            self.emit({"event": "progress", "stage": "optimise", "level": p.level,
                       "levels": p.levels, "evaluation": p.evaluation, "evaluations": p.evaluations,
                       "scale": p.level, "scales": p.levels, "iteration": p.evaluation,
                       "iterations": p.evaluations,
                       "fraction": round(p.fraction, 4), "loss": p.loss,
                       "content_loss": p.content_loss, "style_loss": p.style_loss,
                       "tv_loss": p.tv_loss, "size": list(p.size),
                       **({"seconds_left": round(left, 1)} if left is not None else {}),
                       **({"image": str(saved)} if saved else {})})
        elif self.mode == "bar":
            before = f"level {p.level}/{p.levels} {p.size[1]}x{p.size[0]} "
            after = f" {p.evaluation}/{p.evaluations} loss {p.loss:.4g}"
            if left is not None:
                from ..run.eta import format_duration
                after += f", about {format_duration(left)} left"
            if self.bar:
                width = columns()
                line = bar_line(before, p.fraction, after, width)
                sys.stderr.write("\r" + line.ljust(min(self.width, width - 1)))
                sys.stderr.flush()
                self.width = len(line)
            elif p.evaluation == p.evaluations or p.evaluation % 25 == 0:
                say(bar_line(before, p.fraction, after, sys.maxsize))  # a log: the whole line

    def note(self, note: str) -> None:
        """A run's note: its `notice` record (json), else its line on stderr ("warning: " before
        one to act on), a bar on screen blanked first (the next evaluation draws it again)."""
        self.emit(notes.event(note))
        if self.mode != "json":
            if self.bar:
                clear_line(self.width)
                self.width = 0
            say(f"stylefu: {notes.line(note)}")

    def close(self) -> None:
        if self.bar:
            sys.stderr.write("\n")


def _at_size(rgb, content, keep_size: bool):
    """(rgb, alpha) of a --save-every look, as the result will be: at the working size with the
    content's alpha resized, or (`keep_size`) stretched to the content's size with its alpha
    (cheap, as the final image's detail is not due)."""
    if keep_size:
        from ..method.fullres import to_layer_size
        return to_layer_size(rgb, content.rgb, detail=False), content.alpha
    from ..io.images import resize_array
    alpha = None if content is None else content.alpha  # no content: a printer without images
    return rgb, None if alpha is None else resize_array(alpha, *rgb.shape[:2])


def _stuck_seconds() -> float:
    """How long a run stuck in one evaluation is waited for after stdin's end or a signal
    (serve's STOP_AFTER_STDIN_CLOSES, looked up when asked: one home for both commands)."""
    from .serve import STOP_AFTER_STDIN_CLOSES

    return STOP_AFTER_STDIN_CLOSES


def _watch_stdin(cancel: threading.Event) -> None:
    """Cancel when stdin closes (the GIMP plug-in died or was cancelled); force-exit if stuck."""
    def watch():
        # os.read on the raw descriptor: a daemon thread blocked inside sys.stdin's buffered
        # reader makes the interpreter abort at exit ("could not acquire lock ... stdin").
        while os.read(sys.stdin.fileno(), 1 << 10):
            pass
        cancel.set()
        threading.Timer(_stuck_seconds(), lambda: os._exit(stuck_exit_code())).start()
    threading.Thread(target=watch, daemon=True).start()


def watching_stdin(cancel: threading.Event, watch: bool):
    """With `watch` (--watch-stdin, the plug-ins'): `cancel` set when stdin closes, and the context
    in which SIGINT/SIGTERM end a run stuck in one evaluation within _stuck_seconds() too, though
    stdin stays open, as `serve` does with its codes. Without: an empty context."""
    if not watch:
        return contextlib.nullcontext()
    _watch_stdin(cancel)
    return ended_if_stuck(_stuck_seconds)


def check_styles_are_files(styles: list[str], content: str | None) -> None:
    """A folder or an unexpanded pattern among `run`'s (or `estimate`'s) styles, refused with the
    commands that take one: a run blends the styles it is given, one painting."""
    from ..io.inputs import set_kind

    def typed(word: str) -> str:  # in double quotes where a shell would split or expand it
        return f'"{word}"' if glob.has_magic(word) or any(c.isspace() for c in word) else word

    for style in styles:
        kind = set_kind(style)
        if kind in ("a folder", "a pattern"):
            photo, spec = typed(content or "photo.jpg"), typed(style)
            raise UserError(f"Style {style} is {kind}, and a run paints with the style files it "
                            f"is given, blended: to try each style in it, `stylefu preview {photo} "
                            f"{spec}` (one sheet of them all) or `stylefu batch {photo} --style "
                            f"{spec} --styles-each -o OUTDIR` (a painting each).")


def check_run_paths(args, config: Config) -> Path:
    """Every input readable and every output writable, before any work: -o, --metrics and the
    --save-every images (siblings of -o) never replace an input, a folder or a special file."""
    from ..io.images import OUTPUT_SUFFIXES, check_bits, check_input_file, check_output_path

    check_styles_are_files(args.styles, args.content)
    # --mask-inverse gives a guides.Inverse: its file is `source`.
    inputs = [args.content, *args.styles, *(getattr(m, "source", m) for m in args.masks or [])]
    if config.init not in ("content", "noise"):
        inputs.append(config.init)
    for path in inputs:
        check_input_file(path)
    inputs += [args.model] if args.model else []
    output = check_output_path(args.output, "-o", OUTPUT_SUFFIXES, inputs)
    check_bits(output, args.bits)
    if args.metrics:
        metrics = check_output_path(args.metrics, "--metrics", None, inputs)
        if metrics.resolve() == output.resolve():
            raise UserError(f"--metrics {args.metrics} is the -o image; give it its own name.")
        if config.save_every and metrics.resolve().parent == output.resolve().parent and \
                fnmatch.fnmatch(metrics.name, f"{glob.escape(output.stem)}.scale*-*{output.suffix}"):
            raise UserError(f"--metrics {args.metrics} is named as a --save-every image; give it "
                            "its own name.")
    if config.save_every:
        for saved in output.parent.glob(f"{glob.escape(output.stem)}.scale*-*{output.suffix}"):
            check_output_path(saved, "--save-every", OUTPUT_SUFFIXES, inputs)
        most = max(config.schedule_value("evaluations"), config.schedule_value("coarse_evaluations"))
        longest = f"{output.stem}.scale{config.schedule_value('levels')}-{most:04d}"  # -o's + 12
        check_output_path(output.with_name(longest + output.suffix), "--save-every")
    return output


def cmd_run(args) -> int:
    from ..engines import load_engine_model, resolve_engine
    from ..method.fullres import upscale_mode
    from ..run.pipeline import stylize

    config = config_from_args(args).validate()
    served = args.cancel is not None  # a run of `stylefu serve`
    if (served or args.watch_stdin) and not args.keep_size:
        args.upscale = None  # a plug-in from an earlier stylefu sends it with every preview
    args.upscale = upscale_mode(args.upscale, args.keep_size)
    output = Path(args.output)
    check_run_paths(args, config)
    from ..io.images import check_output_size, fit_long_side, load_image
    from ..run.pipeline import check_inputs

    content, finish = load_image(args.content, "content"), 0.0
    if args.keep_size:
        from ..method.fullres import seconds_to_layer_size, working_config
        config = working_config(config, content.height, content.width)
        finish = seconds_to_layer_size(content.height * content.width)
    # Every input checked before the model loads: a bad one is one sentence, no engine line.
    content, styles, masks = check_inputs(content, args.styles, args.masks, config)
    check_output_size(output, *((content.height, content.width) if args.keep_size else
                                fit_long_side(content.height, content.width, config.size)))
    model = load_engine_model(args.model, config)
    say(f"stylefu: engine {resolve_engine(config.engine, model)}, device {model.device}, model "
        f"{model.path} (weights: {weights_note(model.info)})")
    from ..run import eta
    key = eta.run_key(config, model.info.architecture)
    time_left = eta.TimeLeft.kept(key, config, finish_seconds=finish)
    if args.quiet and args.progress == "bar":
        args.progress = "none"
    printer = ProgressPrinter(args.progress, config.save_every, output, content, args.keep_size,
                              time_left)
    cancel = args.cancel or threading.Event()
    # (A served run's stdin carries the worker's requests.)
    stuck = watching_stdin(cancel, args.watch_stdin and not served)
    try:
        with stuck:
            # The printer writes --save-every's images: the API itself would warn that it does not.
            result = stylize(content, styles, config=dataclasses.replace(config, save_every=0),
                             model=model, callback=printer, cancel=cancel, masks=masks or None,
                             log=printer.note, keep_size=args.keep_size, upscale=args.upscale)
    finally:
        printer.close()
    finished_once(output)
    result.save(output, bits=args.bits, log=printer.note)
    # A served run's start-up was paid once by the worker, not by this run.
    eta.record_speed(key, time_left.measured(),
                     None if served else time.perf_counter() - STARTED - time_left.busy,
                     result.metrics.get("compile_seconds", 0.0),
                     result.metrics.get("compile_cold", False))
    if args.metrics:
        from ..io.files import atomic_write
        text = jsontext.dumps(result.metrics, indent=2)
        atomic_write(args.metrics, lambda tmp: tmp.write_text(text))
    printer.emit({"event": "result", "output": str(output), "metrics": result.metrics})
    say(f"stylefu: wrote {output} in {result.metrics['seconds']:.1f} s "
         f"(loss {result.metrics['total_loss']:.4g}, {result.metrics['iterations']} evaluations)")
    return 0


def _without_own_sheet(specs: list[str], styles: list[Path], sheet: str,
                       log: typing.Callable[[str], None]) -> list[str]:
    """The styles less this preview's -o sheet where a folder, pattern or list brought it in (a
    sheet written beside its styles): else the same preview could never run again. Named
    alone, it stays (and is refused as the output it would overwrite)."""
    from ..io.inputs import file_id, listed_outputs

    own = listed_outputs(specs, styles, {file_id(sheet)})
    for path in own:
        log(f"{path}, this preview's -o, left out of the styles.")
    return [str(path) for path in styles if path not in own]


def cmd_preview(args) -> int:
    from ..engines import load_engine_model
    from ..engines.steps import check_workers
    from ..io.images import PILLOW_FORMATS, check_input_file, check_output_path
    from ..io.inputs import expand_inputs
    from ..run.preview import AUTO_WORKERS, preview

    config = config_from_args(args).validate()
    check_workers(args.workers)
    check_input_file(args.content)  # a bad style is skipped (a marked cell), a bad content is not
    said: list[str] = []  # the styles' notes (HEIC photos left out), told after the first line
    args.styles = _without_own_sheet(args.styles, expand_inputs(args.styles, log=said.append),
                                     args.output, said.append)
    inputs = [args.content, *args.styles]
    inputs += [p for p in (args.model, config.init) if p and p not in ("content", "noise")]
    sheet = check_output_path(args.output, "-o", tuple(PILLOW_FORMATS), inputs)
    if args.json:
        figures = check_output_path(args.json, "--json", None, inputs)
        if figures.resolve() == sheet.resolve():
            raise UserError(f"--json {args.json} is the -o sheet; give it its own name.")
    from ..io.images import check_min_side, load_image
    content = load_image(args.content)  # a content preview() refuses, refused before the model
    check_min_side(content)
    model = load_engine_model(args.model, config)
    say(f"stylefu preview: {len(args.styles)} style(s) at {config.size} px, preset "
         f"{config.preset}; device {model.device}, targets by {model.engine.describe()} "
         f"(weights: {weights_note(model.info)})")
    for note in said:
        say(f"stylefu preview: {notes.line(note)}")
        if args.progress == "json":  # the plug-ins' message (as run's notices)
            jsontext.print_line(notes.event(note))

    done = []

    def progress(**style) -> None:  # the plug-ins' progress bar: none done yet, then each style
        if args.progress == "json":
            jsontext.print_line({"event": "progress", "fraction": len(done) / len(args.styles),
                                 "done": len(done), "of": len(args.styles), **style})

    def report(p) -> None:
        done.append(p)
        progress(style=p.name, ok=p.ok)
        if not p.ok:
            say(f"  {p.name}: SKIPPED, {p.error}", always=True)
        else:
            say(f"  {p.name}: style distance {p.distance_total:.3g}, after preview style loss "
                 f"{p.style_loss:.3g} ({p.style_left_percent} left), content loss "
                 f"{p.content_loss:.3g} ({p.seconds:.1f} s)")

    cancel = threading.Event()
    progress()
    with watching_stdin(cancel, args.watch_stdin):
        result = preview(content, args.styles, config=config, model=model, on_style=report,
                         cancel=cancel,
                         workers=AUTO_WORKERS if args.workers is None else args.workers)
    finished_once(sheet)
    result.save(args.output)
    if args.json:
        result.info["notes"] = [notes.event(note) for note in said]  # the plug-ins show them
        result.save_json(args.json)
    skipped = sum(not p.ok for p in result.styles)
    if args.progress == "json":
        jsontext.print_line({"event": "result", "output": str(args.output),
                             "styles": len(result.styles), "skipped": skipped,
                             "seconds": result.info["seconds"]})
    say(f"stylefu preview: wrote {args.output} in {result.info['seconds']:.1f} s"
         + (f" ({skipped} style(s) could not be previewed: marked with a red cross)" if skipped else "")
         + "; open it to compare the styles.")
    return 0


def _layer_size(args) -> tuple[int, int]:
    """(height, width) of `estimate`'s content: --layer WxH, or the image's header."""
    if args.layer and args.content:
        raise UserError(f"Give the content image or --layer, not both ({args.content} and "
                        f"--layer {args.layer}).")
    if args.layer:
        try:
            width, height = (int(v) for v in args.layer.lower().split("x"))
        except ValueError:
            raise UserError(f"--layer must be WIDTHxHEIGHT in pixels, e.g. 3000x2000, not "
                            f"{args.layer!r}.") from None
        if min(width, height) < 1:
            raise UserError(f"--layer {args.layer} has no pixels.")
        return height, width
    if not args.content:
        raise UserError("Give the content image or --layer WIDTHxHEIGHT.")
    from ..io.images import check_input_file, load_image

    check_input_file(args.content)
    picture = load_image(args.content, "content")
    return picture.height, picture.width


def _styles(args) -> list:
    """`estimate`'s style images, read and checked as `run` reads them (none: [])."""
    from ..io.images import check_input_file
    from ..method.targets import load_style

    check_styles_are_files(args.styles, args.content)
    for path in args.styles:
        check_input_file(path)
    return [load_style(path, f"style {i}") for i, path in enumerate(args.styles, start=1)]


def _check_like_run(height: int, width: int, config: Config, styles=()) -> None:
    """The refusals `run` makes on this content's size before any work (too small, too thin at
    --size, too large for memory): an estimate never prices a run that cannot start."""
    import numpy as np

    from ..io.images import Picture, check_min_side, check_pixel_count
    from ..method.tiling import check_memory
    from ..run.pipeline import check_working_size

    check_pixel_count(height, width, f"A {width}x{height} px content")
    content = Picture(np.broadcast_to(np.float32(0), (height, width, 3)), name="content")
    check_min_side(content)
    check_working_size(height, width, config)
    if config.device != "cuda":  # a GPU's memory is asked of torch by the run itself
        check_memory(content, styles, config, "cpu")


def cmd_estimate(args) -> int:
    """`stylefu estimate`: a run's seconds from the speeds earlier runs recorded (run/eta.py), or
    from a calibration now (recorded in turn)."""
    from ..io.paths import model_file
    from ..method.fullres import seconds_to_layer_size, upscale_mode
    from ..network.vgg import read_artifact_info
    from ..run import eta
    from ..run.pipeline import level_sizes

    config = config_from_args(args).validate()
    upscale_mode(args.upscale, args.keep_size)  # both modes cost about the same
    height, width = _layer_size(args)
    if args.keep_size:
        from ..method.fullres import working_config
        config = working_config(config, height, width)
    _check_like_run(height, width, config, _styles(args))
    key = eta.run_key(config, read_artifact_info(model_file(args.model)).architecture)
    source = f"{len(eta.load_speeds().get(key, {}).get('points', []))} level(s) of earlier runs"
    if args.calibrate or not eta.sized_speed_kept(key):
        from ..engines import load_engine_model

        model = load_engine_model(args.model, config)
        eta.record_speed(key, eta.calibrate(model, config))
        source = "a calibration now"
    finish = seconds_to_layer_size(height * width) if args.keep_size else 0.0
    priced = eta.estimate(height, width, config, key, finish)
    sizes = level_sizes(height, width, config)
    # "compiled" (a run that would compile): its levels, and the speed that priced them.
    figures = {"seconds": priced["seconds"], "text": eta.format_duration(priced["seconds"]),
               "content": [width, height], "levels": [[w, h] for h, w in sizes],
               "preset": config.preset, "speed": key, "measured_by": source, **priced}
    if args.json:  # a `result` event: the plug-ins read it as any worker's final record
        jsontext.print_line({"event": "result", **figures})
    else:
        compiled = priced.get("compiled")
        print(f"about {figures['text']} for {width}x{height} px at --size {config.size} "
              f"(--preset {config.preset}; {key}; speed from {source}"
              + (f"; compiled levels: {compiled['measured_by']}; compiling "
                 f"{compiled['compile_seconds']:g} s, {compiled['compile']}" if compiled else "")
              + ")")
    return 0


def cmd_serve(args) -> int:
    """`stylefu serve`: one worker for many runs (cli/serve.py)."""
    from .serve import serve

    return serve(lambda argv, cancel: main(argv, cancel), (EXIT_CANCELLED, EXIT_TERMINATED),
                 args.model, STARTED, build_parser().commands)


def cmd_info(args) -> int:
    import onnxruntime

    from ..engines import auto_precision, resolve_engine, torch_installed, why_auto
    from ..io.paths import MODEL_FILENAME, cache_dir, default_model_path
    from ..network.forward import FeatureEngine
    from ..network.vgg import read_artifact

    path = Path(args.model) if args.model else default_model_path()
    lines = {"stylefu": _installed_version(), "model": str(path), "cache": str(cache_dir())}
    if path.is_file():
        info, _ = read_artifact(path)
        lines.update(architecture=info.architecture, weights=weights_note(info),
                     sha256=info.weights_sha256,
                     preprocessing=info.preprocessing.get("name", "?"), pooling=info.pooling,
                     layers=", ".join(info.layers),
                     onnxruntime_provider=FeatureEngine(path).provider)
        if path.name == MODEL_FILENAME and not path.name.startswith(info.architecture):
            lines["model_name"] = (f"{MODEL_FILENAME} is the default model's one name, whatever "
                                   f"its network ({info.architecture} here): every command and "
                                   "the GIMP plug-ins look for it there")
    elif args.model:  # a path the user typed: "none installed" would hide a typo
        from ..io.files import path_kind

        kind = path_kind(path)
        lines["weights"] = (f"none: --model {args.model} is not there; check the path, or make "
                            f"the model with `stylefu export --weights auto -o {args.model}`"
                            if kind == "missing" else f"none: --model {args.model} is {kind}, "
                            "not a model file made by `stylefu export`")
    else:
        from ..network.artifact_meta import MAKE_MODEL

        lines["weights"] = f"none installed: run {MAKE_MODEL}"
    gpus, version = [], "not installed"
    if torch_installed():
        import torch

        version = torch.__version__
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    lines.update(torch=version, onnxruntime=onnxruntime.__version__,
                 engine=resolve_engine("auto"), engine_why=why_auto(),
                 precision=auto_precision(),
                 devices=", ".join(["cpu"] + [f"cuda:{i} {n}" for i, n in enumerate(gpus)]))
    if args.json:
        print(jsontext.dumps(lines, indent=2))
    else:
        for key, value in lines.items():
            print(f"{key:>20}: {value}")
    return 0


def cmd_cache(args) -> int:
    """`stylefu cache [status]|prune`: the cache's parts and sizes; least recently used files out."""
    from ..io.cache import (
        LIMIT_ENV,
        PARTS,
        cache_entries,
        cache_limit,
        limit_bytes,
        limit_mb,
        limit_problem,
        prune_cache,
    )
    from ..io.paths import cache_dir
    from ..method.config import check_number

    if args.action == "prune":
        if args.max_mb is None and limit_problem():
            say(f"stylefu cache: {limit_problem()}; pruning to the built-in limit.")
        if args.max_mb is not None and args.max_mb != float("inf"):  # inf: as $STYLEFU_CACHE_MAX_MB
            check_number("max_mb", args.max_mb, 0, 1e9, False)
        limit = cache_limit() if args.max_mb is None else limit_bytes(args.max_mb)
        removed, freed = prune_cache(limit, down_to=1.0)
        if args.json:
            print(jsontext.dumps({"folder": str(cache_dir()), "removed_files": removed,
                                  "freed_mb": round(freed / 1e6, 1), "limit_mb": limit_mb(limit)},
                                 indent=2))
        else:
            mb = limit_mb(limit)
            say(f"stylefu cache: removed {removed} least recently used file(s), "
                f"{freed / 1e6:.1f} MB, from {cache_dir()} "
                f"({'no limit' if mb is None else f'limit {mb:.0f} MB'}).")
        return 0
    if args.max_mb is not None:  # else accepted and ignored
        raise UserError("--max-mb is how far `stylefu cache prune` prunes; `cache status` "
                        "takes none.")
    if limit_problem():
        say(f"stylefu cache: {limit_problem()}; the limit is the built-in one.")
    entries = cache_entries()
    parts = {part: [e for e in entries if e[2].is_relative_to(cache_dir() / part)] for part in PARTS}
    figures = {"folder": str(cache_dir()), "limit_mb": limit_mb(cache_limit()),
               "total_mb": round(sum(e[1] for e in entries) / 1e6, 1),
               "parts": {part: {"files": len(found), "mb": round(sum(e[1] for e in found) / 1e6, 1)}
                         for part, found in parts.items()}}
    if args.json:
        print(jsontext.dumps(figures, indent=2))
    else:
        of = "no limit" if figures["limit_mb"] is None else f"of {figures['limit_mb']} MB"
        print(f"{figures['folder']}: {figures['total_mb']} MB {of} (${LIMIT_ENV}); the model "
              "(with the gradient graph beside it) and downloaded weights are neither counted "
              "nor pruned")
        for part, numbers in figures["parts"].items():
            print(f"{part:>15}: {numbers['files']} file(s), {numbers['mb']} MB")
    return 0


def _installed_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("stylefu")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="stylefu", description="Neural style transfer "
                                     "(Gatys et al.) for scripts, batches and GIMP.")
    parser.add_argument("--version", action="version", version=f"stylefu {_installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="stylize CONTENT with one or more STYLE images")
    run.add_argument("content", help="the picture to paint (an image file or a .npy array)")
    run.add_argument("styles", nargs="+", metavar="style",
                     help="the style image; several are blended (--style-blend) or each painted "
                     "in its own --mask")
    run.add_argument("-o", "--output", required=True, help="output image: .png, .tif (8 or 16 "
                     "bits), .jpg, .webp, .avif, .bmp, or .npy (float32)")
    run.add_argument("--model", help="model artifact (default: $STYLEFU_MODEL or the cache's)")
    run.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                     help="progress display: bar (stderr), json (JSON lines on stdout), none")
    run.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    run.add_argument("--metrics", help="write the final metrics to this JSON file")
    run.add_argument("--bits", type=int, choices=(8, 16), default=8,
                     help="bits per channel of .png/.tif output")
    run.add_argument("--mask", dest="masks", action="append", metavar="PATH",
                     help="grayscale mask, white where the style goes (soft edges blend); once for "
                     "all styles, or once per style in the styles' order (each its own region)")
    run.add_argument("--mask-inverse", dest="masks", action="append", type=_inverse_mask,
                     metavar="PATH",
                     help="as --mask, with 1 - the mask at PATH (the style goes where it is black)")
    run.add_argument("--watch-stdin", action="store_true", help=WATCH_STDIN_HELP)
    run.add_argument("--keep-size", action="store_true",
                     help="write the result (and --save-every images) at the content's own size "
                     "with its own alpha, not at the working size (used by the GIMP plug-ins); "
                     "--size is then at most the content's long side")
    from ..method.fullres import UPSCALE_MODES

    run.add_argument("--upscale", choices=UPSCALE_MODES, default=None,
                     help="with --keep-size, how the result reaches the content's size: detail "
                     "(the content's own fine detail added to the stretched painting: sharp) or "
                     "stretch (resized only: soft) [default: detail]")
    add_config_options(run)
    run.set_defaults(func=cmd_run)

    from ..run.preview import PREVIEW_PRESET, PREVIEW_SIZE

    prev = sub.add_parser("preview", help="quick previews of several STYLE images on CONTENT, "
                          "with their style distances, as one contact sheet")
    prev.add_argument("content", help="the picture the styles are tried on")
    prev.add_argument("styles", nargs="+", metavar="style",
                      help="the candidate style images, each previewed alone: files, folders "
                      "(their images), globs ('styles/*.jpg', quoted) or @list.txt")
    prev.add_argument("-o", "--output", required=True,
                      help="contact sheet image (.png, .jpg, .webp, .avif, .tif, .bmp)")
    prev.add_argument("--json", help="write every style's figures (and the notes told) to this "
                      "JSON file")
    prev.add_argument("--model", help="model artifact (default: $STYLEFU_MODEL or the cache's)")
    prev.add_argument("--progress", choices=("lines", "json"), default="lines",
                      help="lines: a line per style on stderr; json: besides, a JSON record per "
                      "finished style on stdout, then a result record")
    prev.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    prev.add_argument("--watch-stdin", action="store_true", help=WATCH_STDIN_HELP)
    prev.add_argument("--workers", type=int, default=None,
                      help="styles painted at once, sharing the cores [default: on a CPU one per "
                      "torch thread, as many as the memory holds; on a GPU one]")
    # Each style is previewed alone (no blend) and only the sheet is written (no --save-every).
    add_config_options(prev, skip=("style_blend", "save_every"),
                       defaults={"size": PREVIEW_SIZE, "preset": PREVIEW_PRESET})
    prev.without_run_option = ("`stylefu preview` does not take {option}: it paints each style "
                               "alone at a small size and writes only its contact sheet, so "
                               "run the chosen style with `stylefu run ... {option}`.")
    prev.set_defaults(func=cmd_preview)

    estimate = sub.add_parser("estimate", help="how long `run` would take here, from this "
                              "machine's measured speed (earlier runs, or a few seconds' "
                              "calibration now)")
    estimate.add_argument("content", nargs="?", help="the content image (or give --layer)")
    estimate.add_argument("styles", nargs="*", metavar="style",
                          help="style images, checked as `run` checks them (the time does not "
                               "depend on them), so `run`'s content and styles work here")
    estimate.add_argument("--layer", metavar="WxH", help="the content's size instead of a file")
    estimate.add_argument("--keep-size", action="store_true",
                          help="count bringing the result to the content's size (as `run --keep-size`)")
    estimate.add_argument("--upscale", choices=UPSCALE_MODES, default=None,
                          help="with --keep-size, as in run (both cost about the same)")
    estimate.add_argument("--calibrate", action="store_true",
                          help="measure the speed now even when earlier runs measured it")
    estimate.add_argument("--model", help="model artifact for a calibration")
    estimate.add_argument("--json", action="store_true", help="the figures as JSON (the plug-ins')")
    add_config_options(estimate)
    estimate.set_defaults(func=cmd_estimate)

    info = sub.add_parser("info", help="show the model, its weights and the available devices")
    info.add_argument("--model", help="the model to describe (default: $STYLEFU_MODEL or the "
                      "cache's)")
    info.add_argument("--json", action="store_true", help="the same as one JSON object")
    info.set_defaults(func=cmd_info)

    cache = sub.add_parser("cache", help="show the cache's size, or remove its least recently "
                           "used files (targets, torch copies, gradient graphs)")
    cache.add_argument("action", choices=("status", "prune"), nargs="?", default="status",
                       help="status (the default): the cache's parts and sizes; prune: remove "
                       "its least recently used files down to the limit")
    cache.add_argument("--max-mb", type=float, default=None,
                       help="prune: keep at most this many MB (0: remove them all) [default: "
                       "$STYLEFU_CACHE_MAX_MB, else the built-in limit]")
    cache.add_argument("--json", action="store_true", help="the figures as JSON")
    cache.set_defaults(func=cmd_cache)

    from .batch import add_batch_parser  # core's own: the options come from this module
    add_batch_parser(sub, add_config_options, config_from_args, _inverse_mask)
    serve = sub.add_parser(
        "serve", help="answer many `run` and `estimate` requests in one process (JSON lines on "
        "stdin and stdout; the GIMP 3 dialog's previews and estimates)",
        description='One request per line on stdin: {"id": N, "run": [the arguments of '
        '`stylefu run`]} or {"id": N, "estimate": [...]}, answered in order on stdout by '
        '{"event": "started", "id": N} and the command\'s JSON records; {"cancel": N} stops '
        "one; stdin closed, the worker cancels its request and exits.")
    serve.add_argument("--model", help="the model the runs will use, loaded at once (default: "
                       "$STYLEFU_MODEL or the cache's)")
    serve.set_defaults(func=cmd_serve)

    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    parser.commands = sub.choices  # name -> its parser, for parse() below
    return parser


def parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with an unknown option reported by its command's parser: the message points
    to `stylefu run --help`, not to the top level's list of commands. A `run` option that a
    command leaves out on purpose is named with its reason (the parser's `without_run_option`),
    whether spelled in full or abbreviated as `run` takes it (`--save-ev` for `--save-every`)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = parser.commands.get(getattr(args, "command", None), parser)
        why = getattr(command, "without_run_option", None)
        for word in extra:
            option = parser.commands["run"].spelling(word) if word.startswith("--") else None
            if why and option:
                raise UsageError(why.format(option=option))
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _json_progress(argv: list[str], parser: Parser | None = None) -> bool:
    """Whether the command line asks for JSON progress (known before argparse has run, so that
    an argument error is reported as a JSON event too); with the `parser`, an abbreviation
    (`--prog json`) counts as its command's parser reads it."""
    command = parser.commands.get(argv[0]) if parser is not None and argv else None

    def progress(word: str) -> bool:
        return (command.spelling(word) if command else word.split("=", 1)[0]) == "--progress"
    return any(progress(a) and (a.partition("=")[2] == "json" if "=" in a else b == "json")
               for a, b in zip(argv, argv[1:] + [""]))


def main(argv: list[str] | None = None, cancel: threading.Event | None = None,
         interrupted_at_start: bool = False) -> int:
    """Run one `stylefu` command; returns the exit code (see the module docstring). `cancel`:
    given by `stylefu serve` to each run it is asked for, which stops at its next evaluation
    once it is set (and whose start-up the worker paid once). `interrupted_at_start`: a Ctrl-C
    came while the program imported this module (core/__main__.py), reported as any other."""
    as_program = argv is None  # the `stylefu` command itself, not a caller in its own process
    if as_program:  # before torch loads (a script's gets it from load_model)
        from ..method.tiling import primitive_cache_env

        os.environ.update(primitive_cache_env())
        warnings.showwarning = _warning_line
    argv = sys.argv[1:] if argv is None else list(argv)
    json_mode = _json_progress(argv) or cancel is not None  # `serve` answers in JSON lines
    _open_standard_streams()
    _stdout_escapes()

    def event(record: dict) -> None:
        if json_mode:
            try:  # its message as the stderr line says it
                jsontext.print_line(dict(record, message=as_typed(record["message"]))
                                    if "message" in record else record)
            except OSError:  # stdout closed (the reader died): stderr still says what happened
                pass

    try:
        if interrupted_at_start:
            raise KeyboardInterrupt
        _said["quiet"] = False
        parser = build_parser()
        json_mode = json_mode or _json_progress(argv, parser)
        args = parse(parser, argv)
        args.cancel = cancel
        _said["quiet"] = bool(getattr(args, "quiet", False))
        # signals_noted: for the stuck timer's exit code (stuck_exit_code).
        with signals_noted(), signals_cancel_until_done(then_ignore_sigint=as_program):
            return args.func(args)
    except Cancelled:
        event({"event": "cancelled", "reason": "cancelled"})
        say("stylefu: cancelled.", always=True)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        event({"event": "cancelled", "reason": "SIGINT"})
        say("stylefu: interrupted.", always=True)
        return EXIT_CANCELLED
    except Terminated:
        event({"event": "cancelled", "reason": "SIGTERM"})
        say("stylefu: terminated.", always=True)
        return EXIT_TERMINATED
    except UserError as exc:
        event({"event": "error", "message": str(exc)})
        say(f"stylefu: error: {exc}", always=True)
        return exc.exit_code
    except OSError as exc:  # the environment, not stylefu: a full disk, a permission, a lost file
        if _stdout_gone(exc):  # stop quietly, as coreutils do; nothing more can go to stdout
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
            say("stylefu: stopped: the program reading stdout closed the pipe.", always=True)
            return EXIT_BROKEN_PIPE
        where = f" ({exc.filename})" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}; check the path, its permissions and free space."
        event({"event": "error", "message": message})
        say(f"stylefu: error: {message}", always=True)
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: the traceback is for the report
        import traceback

        traceback.print_exc()
        event({"event": "error", "message": f"internal error: {type(exc).__name__}: {exc}",
               "internal": True})
        say(f"stylefu: internal error ({type(exc).__name__}); please report it with the "
            "traceback above.", always=True)
        return EXIT_INTERNAL_ERROR
    finally:
        if as_program:  # also when parsing failed, before the handlers above
            signal.signal(signal.SIGINT, signal.SIG_IGN)
