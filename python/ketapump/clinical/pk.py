"""The predicted plasma ketamine concentration: a published pharmacokinetic model fed with the dose the
pump delivered. A **model estimate** for the operator's screen, never measured and never an input to
any decision the session, the kernel or the limits take.

The models are linear mamillary compartment models (a central compartment of volume ``V1`` exchanging
with one or two peripheral ones, elimination from the central one), with their published rate
constants (per minute) and ``V1`` per kg of body weight:

- ``clements``: Clements & Nimmo 1981 (Br J Anaesth 53:27, doi:10.1093/bja/53.1.27), the 250 µg/kg
  data set; two compartments. The default: at the standard 0.5 mg/kg over 40 min it predicts
  ≈ 0.18 µg/mL at minute 40, the level measured in the depression trials.
- ``domino``: the three-compartment ketamine model of Domino et al. (as tabulated by opentiva,
  PMID 7198883).

The parameter values are those opentiva 1.1.2 tabulates for the same models; ``tests/test_pk.py``
holds this implementation within 1 % of opentiva's at fixed times.

How it is computed (independently of opentiva, which sums the closed-form response of each infusion):
the model's state — the drug amount in each compartment — moves exactly over each interval in which the
infusion rate is constant, in the modal coordinates of the model's rate matrix (each mode decays by
``exp(λ·dt)`` and fills by ``(exp(λ·dt) − 1)/λ`` of the input). The delivered dose is piecewise linear
between two reports, so the estimate is exact for what was reported, however often it is fed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ketapump.errors import ConfigurationError


@dataclass(frozen=True)
class PkModel:
    """A published compartment model: rate constants per minute, ``V1`` in L per kg."""

    name: str
    title: str
    citation: str
    v1_l_per_kg: float
    k10_per_min: float
    k12_per_min: float
    k21_per_min: float
    k13_per_min: float = 0.0
    k31_per_min: float = 0.0

    @property
    def compartments(self) -> int:
        return 3 if self.k13_per_min > 0.0 else 2


MODELS: dict[str, PkModel] = {
    model.name: model
    for model in (
        PkModel(
            name="clements",
            title="Clements 1981",
            citation="Clements JA, Nimmo WS. Br J Anaesth 1981;53:27 (250 µg/kg data set)",
            v1_l_per_kg=1.7522,
            k10_per_min=0.0109,
            k12_per_min=0.0186,
            k21_per_min=0.0137,
        ),
        PkModel(
            name="domino",
            title="Domino",
            citation="Domino EF et al., ketamine kinetics (PMID 7198883), as tabulated by opentiva 1.1.2",
            v1_l_per_kg=0.063,
            k10_per_min=0.4381,
            k12_per_min=0.5921,
            k21_per_min=0.2470,
            k13_per_min=0.5900,
            k31_per_min=0.0146,
        ),
    )
}
DEFAULT_MODEL = "clements"


def pk_model(name: str = DEFAULT_MODEL) -> PkModel:
    """The model of that name; an unknown name is refused, naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigurationError("pk_model", f"{name!r} is not one of {', '.join(MODELS)}") from None


class PlasmaEstimator:
    """The plasma concentration a model predicts for one patient, fed with the delivered dose.

    :meth:`advance` takes the cumulative dose delivered by a session time (mg); the dose since the
    previous report is taken as infused at a constant rate in between. Times must not go backwards.
    """

    def __init__(self, model: PkModel, weight_kg: float) -> None:
        if not (math.isfinite(weight_kg) and weight_kg > 0):
            raise ConfigurationError("weight_kg", f"must be a positive number, not {weight_kg!r}")
        self.model = model
        self.v1_l = model.v1_l_per_kg * weight_kg
        m = model
        # Amounts (mg) per compartment; d/dt x = A x + e1 · u, per second.
        rates = (
            np.array(
                [
                    [-(m.k10_per_min + m.k12_per_min + m.k13_per_min), m.k21_per_min, m.k31_per_min],
                    [m.k12_per_min, -m.k21_per_min, 0.0],
                    [m.k13_per_min, 0.0, -m.k31_per_min],
                ]
            )[: m.compartments, : m.compartments]
            / 60.0
        )
        eigenvalues, vectors = np.linalg.eig(rates)
        # A mamillary model's rate matrix has real, distinct, negative eigenvalues.
        self._lambda = [float(v) for v in np.real(eigenvalues)]
        inverse = np.linalg.inv(np.real(vectors))
        self._input = [float(v) for v in inverse[:, 0]]  # the input's share of each mode
        self._readout = [float(v) / self.v1_l for v in np.real(vectors)[0, :]]  # central amount / V1
        self._modes = [0.0] * m.compartments
        self._t_s: float | None = None
        self._dose_mg = 0.0

    def advance(self, t_s: float, delivered_mg: float) -> float:
        """Moves the model to session time ``t_s``, ``delivered_mg`` having been delivered by then;
        returns the concentration (µg/mL)."""
        if self._t_s is None:
            self._t_s = t_s
        dt = t_s - self._t_s
        if dt < 0:
            raise ConfigurationError("t_s", f"went backwards from {self._t_s:g} s to {t_s:g} s")
        if dt > 0:
            rate = max(delivered_mg - self._dose_mg, 0.0) / dt  # mg/s; a dose never comes back
            for i, lam in enumerate(self._lambda):
                decay = math.exp(lam * dt)
                self._modes[i] = self._modes[i] * decay + self._input[i] * rate * (decay - 1.0) / lam
            self._t_s = t_s
            self._dose_mg = max(delivered_mg, self._dose_mg)
        return self.concentration_ug_ml

    @property
    def concentration_ug_ml(self) -> float:
        """The predicted plasma concentration now (µg/mL, the same as mg/L)."""
        return max(sum(r * z for r, z in zip(self._readout, self._modes, strict=True)), 0.0)


__all__ = ["DEFAULT_MODEL", "MODELS", "PkModel", "PlasmaEstimator", "pk_model"]
