"""The Geant4 application: detector built from a Geometry, physics list, gun, sensor scoring.

Import only after ``g4data.setup_data`` has set GEANT4_DATA_DIR (importing geant4_pybind
without it asks on stdin whether to download the datasets).
"""

from __future__ import annotations

import geant4_pybind as g4
import numpy as np
import shapely

from fastshower.geometry import Geometry
from fastshower.geometry.materials import material
from fastshower.geometry.polygons import regular_polygon
from fastshower.geometry.segmentation import SCINTILLATOR, SILICON

SENSOR_MATERIALS = {SILICON: "G4_Si", SCINTILLATOR: "G4_POLYSTYRENE"}
ROI_MARGIN = 100.0  # mm of absorber beyond the region of interest on each side


def g4_material(name: str):
    """A Geant4 material: NIST by name, or a mixture of NIST materials by mass fraction."""
    nist = g4.G4NistManager.Instance()
    found = g4.G4Material.GetMaterial(name, False)
    if found is not None:
        return found
    if name.startswith("G4_"):
        return nist.FindOrBuildMaterial(name)
    m = material(name)
    mix = g4.G4Material(name, m.density * g4.g / g4.cm3, len(m.components))
    for component, fraction in m.components:
        mix.AddMaterial(nist.FindOrBuildMaterial(component), fraction)
    return mix


class Detector(g4.G4VUserDetectorConstruction):
    """Layers of absorber slabs and sensors from a Geometry. Copy number of a sensor = layer.

    Silicon: one volume per wafer (the wafer hexagon clipped to the silicon region, with the
    wafer's own thickness); scintillator: one ring sector per layer, 3 mm thick. A
    region-of-interest geometry gets square absorbers reaching ROI_MARGIN beyond its cells; a full
    one gets disks. Ring-shaped volumes are circular where the readout uses 288-gons (sagitta
    under 0.1 mm).
    """

    def __init__(self, geom: Geometry, score: bool = True):
        super().__init__()
        self.geom = geom
        self.score = score
        self.sd = None
        self.keep: list = []  # Geant4 objects must outlive construction
        self.sensors: list = []

    def _place(self, solid, mat, mother, z: float, name: str, copy: int = 0, xy=(0.0, 0.0)):
        lv = g4.G4LogicalVolume(solid, g4_material(mat), name)
        pv = g4.G4PVPlacement(None, g4.G4ThreeVector(xy[0], xy[1], z), lv, name, mother, False,
                              copy, False)
        self.keep += [solid, lv, pv]
        return lv

    def Construct(self):
        c, layers = self.geom.cells, self.geom.layers
        z_all = np.array([lay.z for lay in layers])
        half = np.array([lay.sensor_gap / 2 + sum(t for _, t in lay.absorbers) for lay in layers])
        reach = float(np.max(np.abs(z_all) + half)) + 10.0
        size = float(np.max(np.hypot(c["x"], c["y"]))) + 1000.0
        world_solid = g4.G4Box("world", size, size, reach)
        world_lv = g4.G4LogicalVolume(world_solid, g4_material("G4_Galactic"), "world")
        world = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "world", None, False, 0,
                                 False)
        self.keep += [world_solid, world_lv, world]
        self.world_lv = world_lv
        for lay in layers:
            self._build_layer(lay)
        return world

    def _transverse(self, layer: int):
        """Absorber footprint of a layer: ('box', cx, cy, half) or ('ring', r_in, r_out)."""
        sel = self.geom.cells["layer"] == layer
        x, y = self.geom.cells["x"][sel], self.geom.cells["y"][sel]
        seg = self.geom.segmentation
        if self.geom.config.get("region") == "full":
            return ("ring", float(seg.r_in[layer]), float(seg.r_out[layer]))
        cx, cy = 0.5 * (x.max() + x.min()), 0.5 * (y.max() + y.min())
        h = 0.5 * max(x.max() - x.min(), y.max() - y.min()) + ROI_MARGIN
        return ("box", float(cx), float(cy), float(h))

    def _slab(self, shape, thickness: float, name: str):
        if shape[0] == "box":
            return g4.G4Box(name, shape[3], shape[3], thickness / 2), (shape[1], shape[2])
        return g4.G4Tubs(name, shape[1], shape[2], thickness / 2, 0.0, 2 * np.pi), (0.0, 0.0)

    def _build_layer(self, lay) -> None:
        shape = self._transverse(lay.index)
        z = lay.z - lay.zside * lay.sensor_gap / 2  # upstream face of the sensor gap
        for i, (mat, t) in enumerate(reversed(lay.absorbers)):
            z -= lay.zside * t
            if mat == "G4_AIR":  # the world is vacuum: air gaps are left empty (< 0.1 % X0)
                continue
            solid, xy = self._slab(shape, t, f"L{lay.index}_abs{i}")
            self._place(solid, mat, self.world_lv, z + lay.zside * t / 2,
                        f"L{lay.index}_abs{i}", xy=xy)
        self.sensors += self._sensors(lay, shape)

    def _sensors(self, lay, shape):
        """Sensor volumes of one layer: silicon wafers and the scintillator ring."""
        c, seg = self.geom.cells, self.geom.segmentation
        sel = np.flatnonzero(c["layer"] == lay.index)
        out = []
        si = sel[c["type"][sel] == SILICON]
        if len(si):
            out += self._silicon(lay, si)
        sc = sel[c["type"][sel] == SCINTILLATOR]
        if len(sc):
            if self.geom.builder == "grid":
                out += self._grid_plane(lay, sc, "G4_POLYSTYRENE")
            else:
                n = seg.n_sectors
                k = (c["key"][sc] & 0xFFFFFF).astype(int)
                phi0, n_sides = (0.0, n) if shape[0] == "ring" else (k.min(), k.max() - k.min() + 1)
                t = float(c["thickness"][sc][0])
                solid = g4.G4Tubs(f"L{lay.index}_scint", seg.r_border[lay.index],
                                  seg.r_out[lay.index], t / 2, 2 * np.pi * phi0 / n,
                                  2 * np.pi * n_sides / n)
                out.append(self._place_in_world(solid, "G4_POLYSTYRENE", lay, "scint"))
        return out

    def _place_in_world(self, solid, mat, lay, tag, xy=(0.0, 0.0)):
        return self._place(solid, mat, self.world_lv, lay.z, f"L{lay.index}_{tag}",
                           copy=lay.index, xy=xy)

    def _grid_plane(self, lay, idx, mat):
        c = self.geom.cells
        corners = c["corners"][idx]
        x0, x1 = np.nanmin(corners[..., 0]), np.nanmax(corners[..., 0])
        y0, y1 = np.nanmin(corners[..., 1]), np.nanmax(corners[..., 1])
        t = float(c["thickness"][idx][0])
        solid = g4.G4Box(f"L{lay.index}_sensor", (x1 - x0) / 2, (y1 - y0) / 2, t / 2)
        return [self._place_in_world(solid, mat, lay, "sensor",
                                     xy=((x0 + x1) / 2, (y0 + y1) / 2))]

    def _silicon(self, lay, idx):
        """One volume per wafer: the wafer hexagon clipped to the layer's silicon region."""
        if self.geom.builder == "grid":
            return self._grid_plane(lay, idx, "G4_Si")
        c, seg = self.geom.cells, self.geom.segmentation
        wafer = (c["key"][idx] >> 24) & ((1 << 30) - 1)
        r_si = min(seg.r_out[lay.index], seg.r_border[lay.index])
        region = shapely.Polygon(regular_polygon(r_si, seg.n_sectors),
                                 holes=[regular_polygon(seg.r_in[lay.index], seg.n_sectors)])
        out = []
        for w in np.unique(wafer):
            wx, wy = seg.wafers.centre(int(w >> 15) - (1 << 14), int(w & 0x7FFF) - (1 << 14))
            outline = shapely.Polygon(seg.wafers.corners() + [wx, wy]).intersection(region)
            outline = outline.simplify(0.0)  # drop collinear vertices
            if outline.geom_type != "Polygon":
                outline = max(outline.geoms, key=lambda p: p.area)
            xy = np.asarray(shapely.orient_polygons(outline).exterior.coords)[:-1]
            t = float(c["thickness"][idx][wafer == w][0])
            verts = g4.G4TwoVectorVector()
            for a, b in xy[::-1]:  # Geant4 wants the polygon clockwise
                verts.append(g4.G4TwoVector(float(a), float(b)))
            solid = g4.G4ExtrudedSolid(f"L{lay.index}_w{w}", verts, t / 2, g4.G4TwoVector(), 1.0,
                                       g4.G4TwoVector(), 1.0)
            self.keep.append(verts)
            out.append(self._place_in_world(solid, "G4_Si", lay, f"w{w}"))
        return out

    def ConstructSDandField(self):
        if not self.score:  # timing runs without scoring
            return
        self.sd = SensorSD("sensors")
        g4.G4SDManager.GetSDMpointer().AddNewDetector(self.sd)
        for lv in self.sensors:
            self.SetSensitiveDetector(lv, self.sd)


class SensorSD(g4.G4VSensitiveDetector):
    """Records every sensor step with energy: (layer, x, y at the pre-step point, time, MeV).

    Kept to the fewest calls into Geant4: this runs for every step in a sensor.
    """

    def __init__(self, name: str):
        super().__init__(name)
        self.steps: list[tuple] = []

    def ProcessHits(self, step, history) -> bool:
        edep = step.GetTotalEnergyDeposit()
        if edep <= 0.0:
            return False
        pre = step.GetPreStepPoint()
        p = pre.GetPosition()
        self.steps.append((pre.GetTouchable().GetCopyNumber(), p.x, p.y, pre.GetGlobalTime(),
                           edep))
        return True

    def take(self) -> np.ndarray:
        """The event's steps as an (n, 5) array; clears the buffer."""
        out = np.array(self.steps, dtype=np.float64).reshape(-1, 5)
        self.steps = []
        return out


class EmPhysics(g4.G4VModularPhysicsList):
    """Offline mode: stock EM constructor (opt0 or opt1) plus decays; no hadronic physics."""

    def __init__(self, em_option: int):
        super().__init__()
        self.SetVerboseLevel(0)
        em = {0: g4.G4EmStandardPhysics, 1: g4.G4EmStandardPhysics_option1}[em_option]
        self.RegisterPhysics(em())
        self.RegisterPhysics(g4.G4DecayPhysics())


def full_physics(em_option: int):
    """Full mode: FTFP_BERT with the chosen EM option (needs the Geant4 datasets)."""
    name = "FTFP_BERT" + {0: "", 1: "_EMV"}[em_option]
    return g4.G4PhysListFactory(0).GetReferencePhysList(name)


class Gun(g4.G4VUserPrimaryGeneratorAction):
    """Shoots the pre-sampled primaries, one per event, in order."""

    def __init__(self, primaries: dict[str, np.ndarray], particle: str):
        super().__init__()
        self.p = primaries
        self.gun = g4.G4ParticleGun(1)
        self.gun.SetParticleDefinition(g4.G4ParticleTable.GetParticleTable().FindParticle(particle))

    def GeneratePrimaries(self, event) -> None:
        i = event.GetEventID()
        p = self.p
        self.gun.SetParticleEnergy(float(p["primary_energy"][i]))
        self.gun.SetParticlePosition(g4.G4ThreeVector(float(p["primary_x"][i]),
                                                      float(p["primary_y"][i]),
                                                      float(p["primary_z"][i])))
        self.gun.SetParticleMomentumDirection(g4.G4ThreeVector(float(p["primary_dx"][i]),
                                                               float(p["primary_dy"][i]),
                                                               float(p["primary_dz"][i])))
        self.gun.GeneratePrimaryVertex(event)


class EventAction(g4.G4UserEventAction):
    """Hands each finished event's sensor steps to a callback."""

    def __init__(self, detector: Detector, on_event):
        super().__init__()
        self.detector = detector
        self.on_event = on_event

    def EndOfEventAction(self, event) -> None:
        sd = self.detector.sd
        self.on_event(event.GetEventID(), sd.take() if sd is not None else np.zeros((0, 5)))


def quiet() -> None:
    g4.G4EmParameters.Instance().SetVerbose(0)
    ui = g4.G4UImanager.GetUIpointer()
    for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0",
                "/tracking/verbose 0", "/process/verbose 0", "/process/em/verbose 0",
                "/process/had/verbose 0"):
        ui.ApplyCommand(cmd)
