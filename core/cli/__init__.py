"""The `stylefu` command: `main.py` (run, preview, info, cache and the plug-in points) and
`batch.py` (`stylefu batch`)."""

from .main import build_parser, config_from_args, main, say, weights_note

__all__ = ["build_parser", "config_from_args", "main", "say", "weights_note"]
