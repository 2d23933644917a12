"""Detector geometry: cell tables, builders (hgcal, grid, calochallenge), neighbour graph,
point -> cell lookup."""

from fastshower.geometry.detector import Geometry, build_geometry, import_geometry, load, save
from fastshower.geometry.grid import GridConfig
from fastshower.geometry.hgcal import HGCalConfig
from fastshower.geometry.neighbours import EDGE_KINDS
from fastshower.geometry.segmentation import CELL_TYPES, SCINTILLATOR, SILICON

__all__ = ["CELL_TYPES", "EDGE_KINDS", "SCINTILLATOR", "SILICON", "Geometry", "GridConfig",
           "HGCalConfig", "build_geometry", "import_geometry", "load", "save"]
