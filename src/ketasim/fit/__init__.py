"""Fitting models to data and forecasting patients (problems, estimators, forecasts).

* :mod:`.data` — NONMEM-style CSV in, validated (one-line errors naming row and column).
* :mod:`.problem` — :class:`PKProblem` (card + data + error model), batched exact predictions.
* :mod:`.estimators` — :class:`PopulationFOCEI`, :class:`IndividualMAP`,
  :class:`IndividualMCMC` (emcee).
* :mod:`.forecast` — :func:`forecast_patient` (MADRS trajectory, response, relapse, next dose).
* :mod:`.report` — HTML diagnostics (GOF, individual fits, VPC).
"""

from collections.abc import Callable

from .data import Dataset, Subject, read_dataset
from .estimators import FitResult, IndividualMAP, IndividualMCMC, PopulationFOCEI
from .problem import ErrorModel, PKProblem, simulate_dataset

__all__ = ["Dataset", "Subject", "read_dataset", "PKProblem", "ErrorModel", "simulate_dataset",
           "PopulationFOCEI", "IndividualMAP", "IndividualMCMC", "FitResult", "fit_population"]


def fit_population(data: str | Dataset, model: str, estimate: list[str],
                   error: str = "proportional", iiv: list[str] | None = None,
                   method: str = "foce", progress: Callable[[str], None] | None = None,
                   workers: int = 1) -> tuple[PKProblem, FitResult]:
    """One call: read ``data``, build the problem and run the estimator (``foce`` or ``map``).
    ``progress``: optional callable given one-line messages while the estimator runs.
    ``workers``: processes for the population fit's independent objective evaluations
    (gradients, Hessian, profiles; :class:`PopulationFOCEI`), identical results to 1.

    The single routing point for heavy fitting work (swap the estimator or executor here).
    """
    from ..errors import KetasimError

    if int(workers) < 1:
        raise KetasimError("workers", f"need at least 1 worker process, got {workers}")
    ds = read_dataset(data) if isinstance(data, str) else data
    problem = PKProblem(model, ds, estimate, error, iiv)
    if method == "foce":
        return problem, PopulationFOCEI(problem, progress=progress, workers=workers).run()
    if method == "map":
        return problem, IndividualMAP(problem, progress=progress).run()
    raise KetasimError("method", f"unknown method {method!r}", "foce, map")
