"""Shower generators (one module each, registered by name through models.base) and the energy
regression. Importing the package registers the shipped generators."""

from fastshower.models import flowgnn, parametric  # noqa: F401 - the registry entries
