"""The seeded generator of the demo's Luma-like retail stream (DESIGN §9), as a package."""

from flows.generator.events import (
    JUNK_LINES,
    PRODUCTS,
    SOURCE_FILES,
    SPAN_DAYS,
    GeneratedStream,
    generate,
    write_files,
)

__all__ = [
    "JUNK_LINES",
    "PRODUCTS",
    "SOURCE_FILES",
    "SPAN_DAYS",
    "GeneratedStream",
    "generate",
    "write_files",
]
