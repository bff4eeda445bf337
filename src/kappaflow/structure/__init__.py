"""Crystals before any model: arrays, CIF/POSCAR parsing, periodic neighbours, element tables.

The ground floor of the science code: :mod:`kappaflow.data` validates with it and
:mod:`kappaflow.graphs` builds graphs from it. Submodules are imported on demand.
"""
