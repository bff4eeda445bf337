"""Phonons from a universal interatomic potential, and the descriptors derived from them.

The calculator, harmonic and Grüneisen phonons (phonopy), the three-phonon phase space (phono3py),
and κ_L itself in the relaxation-time approximation from fc2 + fc3 (phono3py, ``conductivity``).

Ju et al. (Phys. Rev. Mater. 5, 053801, 2021) transfer through a lower-order "feature property"
(the scattering phase space); here that property is computed for any crystal with a pretrained
potential whose weights ship inside its wheel, instead of being available for 320 compounds.
"""
