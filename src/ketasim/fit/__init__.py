"""Fitting models to data and forecasting patients (problems, estimators, forecasts).

* :mod:`.data` — NONMEM-style CSV in, validated (one-line errors naming row and column).
* :mod:`.problem` — :class:`PKProblem` (card + data + error model), batched exact predictions.
* :mod:`.estimators` — :class:`PopulationFOCEI`, :class:`IndividualMAP`,
  :class:`IndividualMCMC` (emcee).
* :mod:`.forecast` — :func:`forecast_patient` (MADRS trajectory, response, relapse, next dose).
* :mod:`.report` — HTML diagnostics (GOF, individual fits, VPC).
"""

import os
from collections.abc import Callable

import pandas as pd

from ..cards import PKCard
from .data import Dataset, Subject, as_dataset, read_dataset
from .estimators import FitResult, IndividualMAP, IndividualMCMC, PopulationFOCEI
from .problem import BLQ_METHODS, ErrorModel, PKProblem, check_blq, simulate_dataset

__all__ = ["Dataset", "Subject", "read_dataset", "PKProblem", "ErrorModel", "simulate_dataset",
           "PopulationFOCEI", "IndividualMAP", "IndividualMCMC", "FitResult", "fit_population",
           "as_dataset", "BLQ_METHODS"]

#: estimators of :func:`fit_population`
FIT_METHODS = ("foce", "map")
#: most worker processes for a population fit (as the CLI's ``fit --workers``)
MAX_FIT_WORKERS = 256


def fit_population(data: str | os.PathLike | pd.DataFrame | Dataset, model: str | PKCard,
                   estimate: list[str], error: str = "proportional", iiv: list[str] | None = None,
                   method: str = "foce", progress: Callable[[str], None] | None = None,
                   workers: int = 1, blq: str | None = None,
                   error_by_quantity: bool = False) -> tuple[PKProblem, FitResult]:
    """One call: read ``data``, build the problem and run the estimator (``foce`` or ``map``).
    ``data``: a NONMEM-style CSV path, a pandas DataFrame with the same columns (validated
    the same way) or a :class:`Dataset`.
    ``progress``: optional callable given one-line messages while the estimator runs.
    ``workers``: processes for the population fit's independent objective evaluations
    (gradients, Hessian, profiles; :class:`PopulationFOCEI`), identical results to 1;
    1..256 as the CLI's ``--workers``.
    ``blq``: observations below the limit of quantification (``CENS``/``BLQ`` columns) by
    Beal's M3 (``"m3"``, the default: their likelihood of being below the limit) or M1
    (``"m1"``: dropped); the result records it (``blq``) with the count (``n_censored``).
    ``error_by_quantity``: a separate residual error (of kind ``error``) for each observed
    quantity, parent plasma and metabolite, named ``sigma_prop_plasma``,
    ``sigma_prop_metabolite`` … (NONMEM's EPS per DVID); refused when the data have one
    quantity only (:class:`PKProblem`).

    Argument types, ``workers`` and ``method`` are checked before the data are read or any
    fitting starts; a wrong type or value raises :class:`~ketasim.errors.KetasimError` naming
    the argument (parameter names are checked against the card once the data are read).
    The single routing point for heavy fitting work (swap the estimator or executor here).
    """
    from ..errors import KetasimError, check_callable, check_int

    workers = check_int("workers", workers, 1, MAX_FIT_WORKERS)
    blq = check_blq(blq)
    if not isinstance(method, str) or method not in FIT_METHODS:
        raise KetasimError("method", f"unknown method {method!r}", ", ".join(FIT_METHODS))
    if not isinstance(model, str | PKCard):
        raise KetasimError("model", f"must be a PK model id (a string), got "
                           f"{type(model).__name__}", "see `ketasim models`")
    if not isinstance(error, str | ErrorModel):
        raise KetasimError("error", f"must be an error model name, got {type(error).__name__}",
                           "additive, proportional, combined")
    for name, names in (("estimate", estimate), ("iiv", iiv)):
        if names is None and name == "iiv":
            continue
        if not isinstance(names, list | tuple) or not all(isinstance(x, str) for x in names):
            raise KetasimError(name, f"must be a list of parameter names, got {names!r}",
                               "e.g. ['CL', 'V1']")
    if not isinstance(error_by_quantity, bool):
        raise KetasimError("error_by_quantity", f"must be True or False, got "
                           f"{error_by_quantity!r}")
    check_callable("progress", progress)
    ds = as_dataset(data)
    problem = PKProblem(model, ds, list(estimate), error, list(iiv) if iiv is not None else None,
                        blq=blq, error_by_quantity=error_by_quantity)
    if method == "foce":
        return problem, PopulationFOCEI(problem, progress=progress, workers=workers).run()
    return problem, IndividualMAP(problem, progress=progress).run()
