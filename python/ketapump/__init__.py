"""ketapump: an infusion-pump control bridge with a Rust safety kernel.

Engineering software for pump integration, QA and research rigs. Not a certified medical device.
"""

from ketapump._core import __version__

__all__ = ["__version__"]
