"""The `stylefu` command: `main.py` (run, preview, estimate, info, cache, serve and the plug-in
points), `batch.py` (`stylefu batch`), `serve.py` (`stylefu serve`'s requests), `exits.py` (the
exit codes)."""

from .main import build_parser, config_from_args, main, say, weights_note

__all__ = ["build_parser", "config_from_args", "main", "say", "weights_note"]
