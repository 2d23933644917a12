"""The detector construction: the calorimeter built from a Geometry (absorbers, sensors,
cells as volumes or one sensor per layer), upstream material and the fast-simulation entry slab."""

from __future__ import annotations

import geant4_pybind as g4
import numpy as np
import shapely

from fastshower.geometry import Geometry
from fastshower.geometry.grid import lattice_cells
from fastshower.geometry.polygons import regular_polygon
from fastshower.geometry.segmentation import SCINTILLATOR, SILICON
from fastshower.simulation.g4app.materials import g4_material
from fastshower.simulation.g4app.scorers import ShowerEntry, StepRecorder
from fastshower.simulation.scoring import SCORING, aggregate_steps

SENSOR_MATERIALS = {SILICON: "G4_Si", SCINTILLATOR: "G4_POLYSTYRENE"}
ROI_MARGIN = 100.0  # mm of absorber beyond the region of interest on each side
C_LIGHT_MM_PER_NS = 299.792458
X0_SILICON = 93.70  # mm
UPSTREAM_PLANES = 5  # silicon planes standing for the material in front of the calorimeter
ENTRY_GAP = 1.0  # mm: thickness of the vacuum slab in front of the calorimeter (fast-sim entry)


class Detector(g4.G4VUserDetectorConstruction):
    """Layers of absorber slabs and sensors from a Geometry.

    Silicon: one volume per wafer (the wafer hexagon clipped to the silicon region, with the
    wafer's own thickness); scintillator: one ring sector per layer, 3 mm thick. A
    region-of-interest geometry gets square absorbers reaching ROI_MARGIN beyond its cells; a full
    one gets disks. Ring-shaped volumes are circular where the readout uses 288-gons (sagitta
    under 0.1 mm). ``scoring``: see SCORING; with 'cells' every cell is a daughter volume whose
    copy number is its cell id (sensors then carry -1 - layer); on a grid geometry the cells
    are replicas of the sensor plane instead (``_grid_replicas``).

    Options for full events: ``upstream_x0`` puts that many radiation lengths of silicon, in
    UPSTREAM_PLANES planes between 30 % and 80 % of the calorimeter's distance, in front of it
    (a tracker's material budget; there is no magnetic field); ``entry`` (a ShowerEntry scorer)
    is attached to a vacuum slab just in front of the calorimeter's first absorber, where
    particles handed to a fast-simulation model are stopped.
    """

    def __init__(self, geom: Geometry, scoring: str = "cells", upstream_x0: float = 0.0,
                 entry: ShowerEntry | None = None):
        super().__init__()
        if scoring not in SCORING:
            raise ValueError(f"scoring must be one of {', '.join(SCORING)}, not {scoring!r}")
        if scoring == "cells" and geom.config.get("region") == "full":
            scoring = "steps"  # millions of cell volumes: score steps and look cells up instead
        self.geom = geom
        self.scoring = scoring
        self.upstream_x0, self.entry = upstream_x0, entry
        self.sd = None
        self.cell_of_index = None
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
        self._build_front()
        return world

    def _build_front(self) -> None:
        """Upstream material and the fast-simulation entry slab (see the class docstring)."""
        first = min(self.geom.layers, key=lambda lay: abs(lay.z))
        zside = first.zside
        front = abs(first.z) - first.sensor_gap / 2 - sum(t for _, t in first.absorbers)
        shape = self._transverse(first.index)

        def slab(z: float, thickness: float, mat: str, name: str):
            scale = z / front  # the footprint follows the cone from the origin
            scaled = (("box", shape[1] * scale, shape[2] * scale, shape[3] * scale)
                      if shape[0] == "box" else ("ring", shape[1] * scale, shape[2] * scale))
            solid, xy = self._slab(scaled, thickness, name)
            return self._place(solid, mat, self.world_lv, zside * z, name, xy=xy)

        if self.upstream_x0 > 0:
            t = self.upstream_x0 * X0_SILICON / UPSTREAM_PLANES
            for i, f in enumerate(np.linspace(0.3, 0.8, UPSTREAM_PLANES)):
                slab(f * front, t, "G4_Si", f"upstream{i}")
        if self.entry is not None:
            self.entry.zside = zside
            self.entry_lv = slab(front - ENTRY_GAP / 2 - 0.01, ENTRY_GAP, "G4_Galactic", "entry")

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
        """Sensor volumes of one layer: silicon wafers (or planes) and scintillator."""
        c = self.geom.cells
        sel = np.flatnonzero(c["layer"] == lay.index)
        out = []
        for cell_type, mat in SENSOR_MATERIALS.items():
            idx = sel[c["type"][sel] == cell_type]
            if not len(idx):
                continue
            if self.geom.builder == "grid":
                out += self._grid_plane(lay, idx, mat)
            elif self.geom.builder != "hgcal":  # imported: a plane under the cells
                out += self._plane(lay, idx, mat)
            elif cell_type == SILICON:
                out += self._silicon(lay, idx)
            else:
                out += self._scintillator(lay, idx, shape)
        return out

    def _extruded(self, name: str, xy: np.ndarray, thickness: float):
        """A prism of the polygon ``xy`` (counter-clockwise, mm), centred on z = 0."""
        verts = g4.G4TwoVectorVector()
        for a, b in xy[::-1]:  # Geant4 wants the polygon clockwise
            verts.append(g4.G4TwoVector(float(a), float(b)))
        self.keep.append(verts)
        return g4.G4ExtrudedSolid(name, verts, thickness / 2, g4.G4TwoVector(), 1.0,
                                  g4.G4TwoVector(), 1.0)

    def _sensor(self, lay, tag: str, outline, mat: str, idx: np.ndarray):
        """Place one sensor volume (outline: shapely polygon) and, in 'cells' scoring, its cells."""
        outline = shapely.orient_polygons(outline.simplify(1e-6))  # no collinear vertices
        t = float(self.geom.cells["thickness"][idx][0])
        solid = self._extruded(f"L{lay.index}_{tag}", np.asarray(outline.exterior.coords)[:-1], t)
        copy = lay.index if self.scoring != "cells" else -1 - lay.index
        lv = self._place(solid, mat, self.world_lv, lay.z, f"L{lay.index}_{tag}", copy=copy)
        if self.scoring != "cells":
            return [lv]
        return [lv] + self._cells(lv, idx, mat, t)

    def _cells(self, mother, idx: np.ndarray, mat: str, thickness: float) -> list:
        """Cells as daughter volumes (copy number = cell id); equal shapes share one volume.

        Each cell is shrunk by 1 um so that rounding never makes it stick out of its sensor.
        """
        c = self.geom.cells
        lvs: dict[bytes, object] = {}
        for i in idx:
            centre = np.array([c["x"][i], c["y"][i]], dtype=np.float64)
            rel = c["corners"][i, : c["n_corners"][i]].astype(np.float64) - centre
            key = np.round(rel, 3).tobytes()
            if key not in lvs:
                poly = shapely.orient_polygons(shapely.Polygon(rel).buffer(
                    -0.001, join_style="mitre"))
                solid = self._extruded(f"cell{len(lvs)}", np.asarray(poly.exterior.coords)[:-1],
                                       thickness)
                lv = g4.G4LogicalVolume(solid, g4_material(mat), "cell")
                self.keep += [solid, lv]
                lvs[key] = lv
            pv = g4.G4PVPlacement(None, g4.G4ThreeVector(*centre, 0.0), lvs[key], "cell", mother,
                                  False, int(i), False)
            self.keep.append(pv)
        return list(lvs.values())

    def _grid_plane(self, lay, idx, mat):
        if self.scoring == "cells":
            return self._grid_replicas(lay, mat, float(self.geom.cells["thickness"][idx][0]))
        return self._plane(lay, idx, mat)

    def _plane(self, lay, idx, mat):
        """One sensor plane over the cells' bounding box (with 'cells' scoring, the cells as
        its daughters); where no cell is, deposits are lost energy."""
        corners = self.geom.cells["corners"][idx]
        box = shapely.box(np.nanmin(corners[..., 0]), np.nanmin(corners[..., 1]),
                          np.nanmax(corners[..., 0]), np.nanmax(corners[..., 1]))
        return self._sensor(lay, "sensor" if mat == "G4_Si" else "scint", box, mat, idx)

    def _grid_replicas(self, lay, mat: str, thickness: float) -> list:
        """A grid layer's cells as replicas: the plane cut into nx rows along x, each row
        into ny cells along y (replica numbers count from -x and -y, as the segmentation's
        indices), so the navigator finds a cell by arithmetic instead of among thousands of
        placed volumes. Returns the cell volume (the sensitive one)."""
        seg = self.geom.segmentation
        nx, ny = int(seg.nx[lay.index]), int(seg.ny[lay.index])
        size = float(seg.cell_size[lay.index])
        name = f"L{lay.index}_grid"
        plane = self._place(g4.G4Box(name, nx * size / 2, ny * size / 2, thickness / 2), mat,
                            self.world_lv, lay.z, name, copy=lay.index)
        row_solid = g4.G4Box(f"{name}_row", size / 2, ny * size / 2, thickness / 2)
        cell_solid = g4.G4Box(f"{name}_cell", size / 2, size / 2, thickness / 2)
        row = g4.G4LogicalVolume(row_solid, g4_material(mat), f"{name}_row")
        cell = g4.G4LogicalVolume(cell_solid, g4_material(mat), f"{name}_cell")
        self.keep += [row_solid, cell_solid, row, cell,
                      g4.G4PVReplica(f"{name}_row", row, plane, g4.EAxis.kXAxis, nx, size),
                      g4.G4PVReplica(f"{name}_cell", cell, row, g4.EAxis.kYAxis, ny, size)]
        return [cell]

    def _grid_index(self) -> tuple[tuple[int, int, int], np.ndarray]:
        """For a grid in 'cells' scoring: the (layers, nx, ny) index space of the C++ scorer
        (layer = copy number of the plane, then the x and y replica numbers) and the cell id
        of every index (-1 where a layer has fewer cells)."""
        table = lattice_cells(self.geom)
        return table.shape, table.ravel()

    def _scintillator(self, lay, idx, shape):
        """The ring (full detector) or ring sector (region of interest) holding the tiles.

        A sector is a polygon on the same 288-gon chords as the tiles; a full ring is a tube
        (Geant4 prisms cannot have holes), used with step scoring only.
        """
        c, seg, n = self.geom.cells, self.geom.segmentation, self.geom.segmentation.n_sectors
        r_in, r_out = seg.r_border[lay.index], seg.r_out[lay.index]
        t = float(c["thickness"][idx][0])
        if shape[0] == "ring":
            solid = g4.G4Tubs(f"L{lay.index}_scint", r_in, r_out, t / 2, 0.0, 2 * np.pi)
            return [self._place_in_world(solid, "G4_POLYSTYRENE", lay, "scint")]
        k = (c["key"][idx] & 0xFFFFFF).astype(int)
        a = 2 * np.pi * np.arange(k.min(), k.max() + 2) / n
        ring = np.concatenate([r_out * np.stack([np.cos(a), np.sin(a)], -1),
                               r_in * np.stack([np.cos(a), np.sin(a)], -1)[::-1]])
        return self._sensor(lay, "scint", shapely.Polygon(ring), "G4_POLYSTYRENE", idx)

    def _place_in_world(self, solid, mat, lay, tag, xy=(0.0, 0.0)):
        return self._place(solid, mat, self.world_lv, lay.z, f"L{lay.index}_{tag}",
                           copy=lay.index, xy=xy)

    def _silicon(self, lay, idx):
        """One volume per wafer: the wafer hexagon clipped to the layer's silicon region."""
        c, seg = self.geom.cells, self.geom.segmentation
        wafer = (c["key"][idx] >> 24) & ((1 << 30) - 1)
        r_si = min(seg.r_out[lay.index], seg.r_border[lay.index])
        region = shapely.Polygon(regular_polygon(r_si, seg.n_sectors),
                                 holes=[regular_polygon(seg.r_in[lay.index], seg.n_sectors)])
        out = []
        for w in np.unique(wafer):
            wx, wy = seg.wafers.centre(int(w >> 15) - (1 << 14), int(w & 0x7FFF) - (1 << 14))
            outline = shapely.Polygon(seg.wafers.corners() + [wx, wy]).intersection(region)
            if outline.geom_type != "Polygon":
                outline = max(outline.geoms, key=lambda p: p.area)
            out += self._sensor(lay, f"w{w}", outline, "G4_Si", idx[wafer == w])
        return out

    def ConstructSDandField(self):
        sdm = g4.G4SDManager.GetSDMpointer()
        if self.entry is not None:
            self.entry_sd = g4.G4MultiFunctionalDetector("entry")
            first, *rest = self.entry.particles
            self.entry_filter = g4.G4SDParticleFilter("fast", first)
            for name in rest:
                self.entry_filter.add(name)
            self.entry.SetFilter(self.entry_filter)
            self.entry_sd.RegisterPrimitive(self.entry)
            sdm.AddNewDetector(self.entry_sd)
            self.SetSensitiveDetector(self.entry_lv, self.entry_sd)
        if self.scoring == "none":  # timing runs without scoring
            return
        self.sd = g4.G4MultiFunctionalDetector("cells")
        if self.scoring == "cells" and self.geom.builder == "grid":
            shape, self.cell_of_index = self._grid_index()
            self.primitive = g4.G4PSEnergyDeposit3D("edep", *shape, 2, 1, 0)
        elif self.scoring == "cells":
            self.primitive = g4.G4PSEnergyDeposit("edep")
        else:
            self.primitive = StepRecorder("steps")
            self.charged = g4.G4SDChargedFilter("charged")
            self.primitive.SetFilter(self.charged)
        self.sd.RegisterPrimitive(self.primitive)
        sdm.AddNewDetector(self.sd)
        for lv in self.sensors:
            self.SetSensitiveDetector(lv, self.sd)
        if self.scoring == "cells":
            self.collection = sdm.GetCollectionID("cells/edep")

    def layer_of(self, z: np.ndarray) -> np.ndarray:
        """Layer index of points inside sensors, from their z (nearest sensor plane)."""
        zs = np.array([lay.z for lay in self.geom.layers])
        order = np.argsort(zs)
        pos = np.clip(np.searchsorted(zs[order], z), 1, len(zs) - 1)
        nearer = np.abs(zs[order][pos - 1] - z) < np.abs(zs[order][pos] - z)
        return order[np.where(nearer, pos - 1, pos)]

    def read_event(self, event):
        """(cell ids, energies MeV, first-deposit times ns, lost MeV) of a finished event."""
        geom = self.geom
        if self.scoring == "steps":
            s = self.primitive.take()
            return aggregate_steps(geom, self.layer_of(s[:, 2]), s[:, 0], s[:, 1], s[:, 3],
                                   s[:, 4])
        if self.scoring == "none":
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0), 0.0
        hits = event.GetHCofThisEvent().GetHC(self.collection)
        pairs = np.array(list(hits), dtype=np.float64).reshape(-1, 2)
        ids = pairs[:, 0].astype(np.int64)
        if self.cell_of_index is not None:  # a grid's replicas: scorer index -> cell id
            ids = self.cell_of_index[ids]
        inside = ids >= 0
        order = np.argsort(ids[inside])
        ids, energy = ids[inside][order], pairs[inside, 1][order]
        vertex = event.GetPrimaryVertex(0).GetPosition()
        c = geom.cells
        dist = np.sqrt((c["x"][ids] - vertex.x) ** 2 + (c["y"][ids] - vertex.y) ** 2
                       + (c["z"][ids] - vertex.z) ** 2)
        return ids, energy, dist / C_LIGHT_MM_PER_NS, float(pairs[~inside, 1].sum())
