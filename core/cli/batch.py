"""`stylefu batch`: folders, globs and lists of images through `stylize_many`, with a manifest.

Exit status: 0 when every item succeeded (or was skipped by --resume), 3 when some failed (each
is in the manifest with its message), 2 for a user's error before any work, 130 after Ctrl-C,
141 when the reader of stdout went away (`--progress json | head`; --resume goes on).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .. import jsontext, notes
from ..batch.driver import (
    DEFAULT_PATTERN,
    EACH_PATTERN,
    MANIFEST_NAME,
    Manifest,
    RunOptions,
    check_shared_inputs,
    config_hash,
    default_workers,
    earlier_outputs,
    make_items,
    pending,
    stylize_many,
)
from ..engines.steps import check_workers
from ..errors import UserError
from ..io.files import check_writable_folder, missing_folders, remove_empty
from ..io.inputs import expand_inputs, listed_outputs, set_kind
from .bar import bar_line, clear_line, columns
from .exits import EXIT_CANCELLED, EXIT_SOME_FAILED, EXIT_TERMINATED, Terminated


class BatchProgress:
    """One bar over items on stderr (`bar`), JSON lines on stdout (`json`: per-item progress and
    each item's manifest entry), only the failed items on stderr (`quiet`), or nothing (`none`);
    the batch's notes to act on (once each) as lines or `notice` records, but under `quiet`."""

    def __init__(self, mode: str, total: int, skipped: int):
        self.mode, self.total, self.skipped = mode, total, skipped
        self.done = self.failed = 0
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.width = 0  # the bar's last line: a shorter one is padded over it
        self.line = ""  # the bar drawn last, drawn again after a note

    def note(self, note: str) -> None:
        """A note of the batch (stylize_many's `log`): a line of its own, never run on from the
        bar's (which is blanked, then drawn again below it), or its `notice` record."""
        self.emit(notes.event(note))
        if self.mode not in ("bar", "none"):
            return
        drawn = self.mode == "bar" and self.tty and self.width
        if drawn:
            clear_line(self.width)
        print(f"stylefu batch: {notes.line(note)}", file=sys.stderr, flush=True)
        if drawn:
            sys.stderr.write(self.line)
            sys.stderr.flush()

    def emit(self, record: dict) -> None:
        if self.mode == "json":
            jsontext.print_line(record)

    def evaluation(self, index: int, record: dict) -> None:
        self.emit({"event": "progress", "item": index, **record})

    def item(self, entry: dict) -> None:
        self.done += 1
        self.failed += entry["status"] != "ok"
        self.emit({"event": "item", **entry})
        failure = None if entry["status"] == "ok" else \
            f"stylefu batch: {entry['input']} failed: {entry['error']}"
        if self.mode == "quiet" and failure:
            print(failure, file=sys.stderr, flush=True)
        if self.mode != "bar":
            return
        # a line of its own after the bar's, never text inside the bar line (notes: self.note)
        said = [failure] if failure else []
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed * 60 if elapsed > 0 else 0.0
        left = (self.total - self.done) / (self.done / elapsed) if self.done else 0.0
        from ..run.eta import format_duration  # the run bar's words: "about 1 min 05 s left"

        after = (f" {self.done}/{self.total} items"
                 f"{f', {self.failed} failed' if self.failed else ''}, {rate:.1f} images/min"
                 + (f", about {format_duration(left)} left" if self.done < self.total else ""))
        fraction = self.done / max(1, self.total)
        if self.tty:
            width = columns()
            line = bar_line("", fraction, after, width)
            sys.stderr.write("\r" + line.ljust(min(self.width, width - 1)))
            sys.stderr.flush()
            self.width, self.line = len(line), line
        else:
            print(bar_line("", fraction, after, sys.maxsize), file=sys.stderr, flush=True)
        if said:
            print(("\n" if self.tty else "") + "\n".join(said), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.mode == "bar" and self.tty:
            sys.stderr.write("\n")


def _without_earlier_outputs(specs: list[str], inputs: list[Path], manifest: Path,
                             log: Callable[[str], None]) -> list[Path]:
    """`inputs` less the results of earlier batches into this -o that a folder, pattern or list
    brought in (the manifest lists them): else a batch that writes beside its photos could never
    run again, its results now inputs. A path given alone stays (and is refused as an output)."""
    earlier = listed_outputs(specs, inputs, earlier_outputs(manifest))
    kept = [path for path in inputs if path not in earlier]
    if inputs and not kept:  # else a batch of nothing, with exit 0
        raise UserError(f"Every input is a result of an earlier batch into {manifest.parent} (its "
                        f"{manifest.name} lists them); to paint them again, give another -o.")
    if len(kept) < len(inputs):
        log(f"{len(inputs) - len(kept)} result(s) of earlier batches left out of the inputs (the "
            f"manifest {manifest} lists them).")
    return kept


def _styles(specs: list[str], each: bool, log: Callable[[str], None]) -> list[str]:
    """The --style files: a folder, glob or @list gives its images, each its own output, so it
    asks for --styles-each (a whole folder blended into one is rarely what was meant)."""
    styles = []
    for spec in specs:
        kind = set_kind(spec)
        if kind is None:
            styles.append(spec)
            continue
        if not each:
            raise UserError(f"--style {spec} names several styles ({kind}): add --styles-each for "
                            "one output per style (to blend styles, give each with its own --style).")
        styles += [str(p) for p in expand_inputs([spec], log=log)]
    return styles


def cmd_batch(args, to_config: Callable) -> int:
    config = to_config(args).validate()
    check_workers(args.workers)  # before the first line, which names the workers
    outdir = Path(args.output)
    said: list[str] = []  # the inputs' notes, told once the progress display is up
    inputs = _without_earlier_outputs(args.inputs, expand_inputs(args.inputs, log=said.append),
                                      outdir / MANIFEST_NAME, said.append)
    if args.styles_each and config.style_blend:
        raise UserError("--styles-each paints each style alone; leave out --style-blend.")
    args.styles = _styles(args.styles, args.styles_each, said.append)
    items = make_items(inputs, args.styles, outdir, args.name, args.styles_each)
    from ..method.fullres import upscale_mode

    options = RunOptions(bits=args.bits, keep_size=args.keep_size,
                         upscale=upscale_mode(args.upscale, args.keep_size),
                         masks=tuple(args.masks or ()),
                         frames=args.frames, warp=args.warp)
    check_shared_inputs(items, config, options)  # before any work: nothing made for a bad style
    if args.frames and args.styles_each and len(args.styles) > 1:
        raise UserError("--frames makes one sequence; with --styles-each give one --style per batch.")
    from ..engines import load_driver_model
    # A missing model ends here, before any folder.
    model, _ = load_driver_model(args.model, config, args.frames, args.ray is not None)
    made = missing_folders(outdir)  # removed again where no item finishes
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the output folder {outdir} ({exc.strerror}); choose "
                        "another -o.") from None
    check_writable_folder(outdir, "choose another -o")  # a read-only one: before any work
    chash = config_hash(config, model.path, options)
    manifest_path = outdir / MANIFEST_NAME
    skipped: list[int] = []
    if args.resume:
        _, skipped = pending(items, manifest_path, chash)
    if args.quiet and args.progress != "json":
        args.progress = "quiet"
    progress = BatchProgress(args.progress, len(items) - len(skipped), len(skipped))
    workers = min(args.workers or default_workers(config=config), max(1, len(items) - len(skipped)))
    engine = (f"Ray ({args.ray})" if args.ray else "frames in order in this process" if args.frames
              else f"{workers} local worker(s)")
    if args.progress in ("bar", "none"):
        done = f", {len(skipped)} already done (--resume)" if args.resume else ""
        print(f"stylefu batch: {len(items)} item(s){done}; {engine}; manifest {manifest_path}",
              file=sys.stderr, flush=True)
    for note in said:
        progress.note(note)
    manifest = Manifest(manifest_path)
    failed = 0
    results = stylize_many(items, config, model=model.path, workers=args.workers, ray=args.ray,
                           options=options, skip=skipped,
                           progress=progress.evaluation if args.progress == "json" else None,
                           log=progress.note)
    try:
        for result in results:
            entry = result.record(chash)
            manifest.append(entry)
            progress.item(entry)
            failed += not result.ok
    except UserError:  # a damaged style (its targets come first): no item ran
        remove_empty(made if not progress.done else [])
        raise
    except (KeyboardInterrupt, Terminated) as stop:
        # run's records and exit codes ("reason"; 130 or 143), with the count and the way on
        term = isinstance(stop, Terminated)
        progress.close()
        progress.emit({"event": "cancelled", "reason": "SIGTERM" if term else "SIGINT",
                       "done": progress.done})
        results.close()  # the workers gone, the folder holds what it will
        remove_empty(made if not progress.done else [])
        way_on = ("the manifest lists them, and --resume goes on from there" if progress.done
                  else "run it again to start")
        print(f"stylefu batch: {'terminated' if term else 'interrupted'} after {progress.done} "
              f"item(s); {way_on}.", file=sys.stderr, flush=True)
        return EXIT_TERMINATED if term else EXIT_CANCELLED
    finally:
        results.close()  # the workers stop now, even when stdout broke (the reader went away)
        manifest.close()
    progress.close()
    progress.emit({"event": "batch", "done": progress.done, "failed": failed,
                   "skipped": len(skipped), "manifest": str(manifest_path)})
    if args.progress in ("bar", "none"):
        print(f"stylefu batch: {progress.done - failed} written, {failed} failed, {len(skipped)} "
              f"skipped; see {manifest_path}", file=sys.stderr, flush=True)
    return EXIT_SOME_FAILED if failed else 0


# What `stylefu batch` says of a `run` option it does not take (argparse's "unrecognized
# arguments" would leave a user of `run` guessing): every such option, for this one reason.
WITHOUT_RUN_OPTION = ("`stylefu batch` does not take {option}: a batch writes only each item's "
                      "result and its line in OUTDIR/manifest.jsonl (status, seconds, losses), so "
                      "run that image alone with `stylefu run ... {option}` instead.")


def add_batch_parser(sub, add_config_options: Callable, to_config: Callable,
                     inverse_mask: Callable) -> None:
    """Register `stylefu batch`; the stylization options come from the Config option generator,
    `--mask-inverse`'s type from run's."""
    batch = sub.add_parser("batch", help="stylize many images (folders, globs, @list.txt) into a "
                           "folder, locally or on Ray, with a manifest and --resume")
    batch.add_argument("inputs", nargs="+", metavar="input",
                       help="image, folder, glob ('photos/*.jpg', quoted) or @list.txt")
    batch.add_argument("--style", dest="styles", action="append", required=True, metavar="STYLE",
                       help="style image; several blend (as in run) unless --styles-each; with "
                       "--styles-each also a folder, glob or @list.txt of styles")
    batch.add_argument("-o", "--output", required=True, help="output folder (made if missing)")
    batch.add_argument("--styles-each", action="store_true",
                       help="one output per input x style pair instead of one blended output")
    batch.add_argument("--name", default=None,
                       help="output name pattern with {stem} {name} {ext} {index} {style} "
                       "{style_index} [default: "
                       f"{DEFAULT_PATTERN}, with --styles-each {EACH_PATTERN}]")
    batch.add_argument("--resume", action="store_true",
                       help="skip items whose output exists and whose manifest entry has the same "
                       "config hash")
    batch.add_argument("--workers", type=int, default=None,
                       help="parallel workers, each with its share of the cores [default: one per "
                       "GPU, else one per core, as many as the memory holds]")
    batch.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run the items as Ray tasks on the cluster at ADDRESS, or on a local "
                       "one (needs Ray: pip install ray)")
    batch.add_argument("--frames", action="store_true",
                       help="the inputs are a film's frames: in order, each starting from the "
                       "previous frame's result (steadier video)")
    batch.add_argument("--warp", action=argparse.BooleanOptionalAction, default=False,
                       help="with --frames, move the previous result along the motion between the two "
                       "input frames first (follows camera motion; more flicker, see docs/batches.md)")
    batch.add_argument("--model", help="model artifact (default: $STYLEFU_MODEL or the cache's)")
    batch.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                       help="bar over items (stderr), json (per-item JSON lines on stdout), none")
    batch.add_argument("-q", "--quiet", action="store_true",
                       help="print errors only: each failed item, no bar or summary line")
    batch.add_argument("--bits", type=int, choices=(8, 16), default=8,
                       help="bits per channel of .png/.tif output")
    batch.add_argument("--mask", dest="masks", action="append", metavar="PATH",
                       help="mask(s) as in run, used for every item")
    batch.add_argument("--mask-inverse", dest="masks", action="append", type=inverse_mask,
                       metavar="PATH", help="as --mask, with 1 - the mask at PATH (as in run)")
    batch.add_argument("--keep-size", action="store_true",
                       help="write each result at its input's own size, with its alpha")
    from ..method.fullres import UPSCALE_MODES

    batch.add_argument("--upscale", choices=UPSCALE_MODES, default=None,
                       help="with --keep-size: detail (the input's fine detail added) or stretch "
                       "(as `run --upscale`) [default: detail]")
    add_config_options(batch, skip=("save_every",))
    batch.set_defaults(func=lambda args: cmd_batch(args, to_config))
    batch.without_run_option = WITHOUT_RUN_OPTION
