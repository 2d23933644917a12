"""Shower generators (one module each, registered by name through models.base) and the energy
regression. Importing the package registers the shipped generators."""

from fastshower.models import (  # noqa: F401 - registry entries
    flowgnn,
    gan3d,
    layerhits,
    parametric,
)
