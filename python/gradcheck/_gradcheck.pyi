"""The Rust extension underneath `gradcheck` (use the package's `check` instead)."""

from typing import Optional

# (name, shape, float64 little-endian bytes, was float32)
_Wire = tuple[str, list[int], bytes, bool]

def check(
    parameters: list[_Wire],
    data: list[_Wire],
    gradients: Optional[list[_Wire]],
    model: Optional[str],
    options: str,
) -> tuple[str, str]:
    """Runs a check; returns (the report as the CLI's JSON, the CLI's text table)."""

def version() -> str:
    """The version of the Rust library."""

def progress() -> int:
    """Perturbations the CPU evaluator has done in this process so far."""
