"""Each chapter's protocol as code: the paper's numbers, data, configs and runs.

One module per paper (the book key), so that a chapter's notebooks only set
parameters and call these functions, and everything they compute is testable:

* :mod:`fer.experiments.cbam_vgg` -- Ghimire et al., VGG16 + CBAM on FER2013.
* :mod:`fer.experiments.manet` -- Gan et al., MANet on RAF-DB and CK+ (10 folds).
* :mod:`fer.experiments.mapnet` -- Ju and Zhao, MAPNet on RAF-DB, AffectNet, FED-RO.
* :mod:`fer.experiments.msanet` -- Ghadai and Patra, MSA-Net on RAF-DB, AffectNet, Pose-AffectNet.
* :mod:`fer.experiments.masked` -- Hayashi et al., two-stage attention for masked faces.

A module holds the paper's reported numbers as data (never typed into a page), a
``Setup`` built from the notebook parameters of a profile, the data loaders for that
profile (SynFER stand-ins in ``smoke``/``demo``, the real dataset from ``data_root``
in ``paper``), and functions that train or load the chapter's runs through
:func:`fer.runs.run`, so every notebook of a chapter shares one cache.
"""
from __future__ import annotations

from . import cbam_vgg, manet, mapnet, masked, msanet

__all__ = ["cbam_vgg", "manet", "mapnet", "masked", "msanet"]
