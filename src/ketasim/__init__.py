"""ketasim: a simulator of ketamine for depression, from dose to mood.

Research tool, not medical advice.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "run_trial", "simulate", "simulate_pk"]


def __getattr__(name: str):
    """Lazy top-level entry points (keeps ``import ketasim`` light)."""
    if name == "simulate":
        from .engine import simulate

        return simulate
    if name == "simulate_pk":
        from .pk import simulate_pk

        return simulate_pk
    if name == "run_trial":
        from .trial import run_trial

        return run_trial
    raise AttributeError(name)
