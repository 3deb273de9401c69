"""stylefu.export: VGG19 weights (download, checksum, load) -> one verified ONNX artifact."""

from .artifact import export, verify
from .weights import REMOTE, download, get_weights

__all__ = ["export", "verify", "download", "get_weights", "REMOTE"]
