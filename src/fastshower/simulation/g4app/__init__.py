"""The Geant4 application: detector built from a Geometry, physics list, gun, sensor scoring.

Import only after ``g4data.setup_data`` has set GEANT4_DATA_DIR (importing geant4_pybind
without it asks on stdin whether to download the datasets).

Modules (as Geant4's own examples keep them apart): ``materials``, ``detector`` (construction),
``scorers`` (sensor steps, fast-simulation entry), ``physics`` (lists), ``actions`` (gun, event,
tracking, verbosity).
"""

import geant4_pybind as g4

from fastshower.simulation.g4app.actions import EventAction, Gun, LeakageAction, quiet
from fastshower.simulation.g4app.detector import Detector
from fastshower.simulation.g4app.materials import g4_material
from fastshower.simulation.g4app.physics import OfflinePhysics, full_physics, physics_list_name
from fastshower.simulation.g4app.scorers import ShowerEntry, StepRecorder
from fastshower.simulation.scoring import SCORING

__all__ = ["SCORING", "Detector", "EventAction", "Gun", "LeakageAction", "OfflinePhysics",
           "ShowerEntry", "StepRecorder", "full_physics", "g4", "g4_material",
           "physics_list_name", "quiet"]
