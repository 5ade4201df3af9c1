"""Build the example architectural interior and save it as a .blend.

Runs in the project venv (bpy as a Python module) and in a real Blender:

    .venv/bin/python examples/build_interior.py --out /tmp/interior.blend
    blender -b --python examples/build_interior.py -- --out interior.blend

The room is 6 x 4.5 m, 2.8 m high (metres, Z up; interior from x = -3..3, y = -2.25..2.25,
z = 0..2.8). The north wall has a real window opening (a hole, no glass), the east wall a
door opening with a door leaf standing ajar. Furniture: dining table with four chairs,
sofa, coffee table, floor lamp, potted plant, rug, credenza (sideboard) and a shelf.

Semantic classes (ADE20K names, see CONVENTIONS.md) are set on purpose at every level the
add-on resolves, in its order:
  1. object custom property ``archviz_class``: walls, floor, ceiling, window frame, door,
     door frame, coffee table;
  2. material custom property: the sofa's material "Fabric_Grey" -> "sofa";
  3. collection custom property: collection "Storage" -> "cabinet" (object "Credenza", a
     sideboard whose object, material and collection names carry no class keyword, so only
     the collection property classifies it);
  4. keyword table over names: Table, Chair_1..4, Lamp, Plant_Pot, Plant_Leaves, Rug, Shelf.

Everything is built with bmesh primitives (no operators except file handling), so the
whole build takes well under a second.
"""

import argparse
import math
import os
import sys
import time

import bpy  # first: with the bpy module, bmesh and mathutils exist only after it
import bmesh
from mathutils import Euler, Matrix, Vector

# --------------------------------------------------------------------------------------
# Dimensions (metres). Tests import these to aim rays at the openings.
ROOM_X0, ROOM_X1 = -3.0, 3.0
ROOM_Y0, ROOM_Y1 = -2.25, 2.25
ROOM_H = 2.8
WALL_T = 0.15
SLAB_T = 0.10

# Window opening in the north wall (y = ROOM_Y1 .. ROOM_Y1 + WALL_T).
WINDOW = {"x0": -0.3, "x1": 1.5, "z0": 0.85, "z1": 2.25, "frame": 0.06, "depth": 0.10}
# Door opening in the east wall (x = ROOM_X1 .. ROOM_X1 + WALL_T).
DOOR = {"y0": 0.7, "y1": 1.6, "height": 2.1, "jamb": 0.05, "leaf_t": 0.04, "ajar_deg": 40.0}

CAMERA_MAIN = "Camera"
CAMERA_CORNER = "Camera_Corner"

# Every mesh object -> (ADE20K class, where the add-on finds it) for the object's first
# material. The sources are the add-on's resolution levels, in its order: "object property",
# "material property", "collection property", then the keyword table over the "object name".
CLASS_PLAN = {
    "Floor": ("floor", "object property"),
    "Ceiling": ("ceiling", "object property"),
    "Wall_North": ("wall", "object property"),
    "Wall_South": ("wall", "object property"),
    "Wall_East": ("wall", "object property"),
    "Wall_West": ("wall", "object property"),
    "Window_Frame": ("windowpane", "object property"),
    "Door_Frame": ("door", "object property"),
    "Door": ("door", "object property"),
    "Coffee_Table": ("coffee table", "object property"),
    "Sofa": ("sofa", "material property"),         # material "Fabric_Grey"
    "Credenza": ("cabinet", "collection property"),  # collection "Storage"
    "Table": ("table", "object name"),
    "Chair_1": ("chair", "object name"),
    "Chair_2": ("chair", "object name"),
    "Chair_3": ("chair", "object name"),
    "Chair_4": ("chair", "object name"),
    "Lamp": ("lamp", "object name"),
    "Plant_Pot": ("plant", "object name"),
    "Plant_Leaves": ("plant", "object name"),
    "Rug": ("rug", "object name"),
    "Shelf": ("shelf", "object name"),
}
OBJECT_CLASSES = {k: c for k, (c, how) in CLASS_PLAN.items() if how == "object property"}
MATERIAL_CLASSES = {"Fabric_Grey": "sofa"}
COLLECTION_CLASSES = {"Storage": "cabinet"}


# --------------------------------------------------------------------------------------
# Materials

def _material(name, color, roughness=0.5, metallic=0.0, emission=None, klass=None):
    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*color, 1.0)  # Workbench / viewport colour
    mat.roughness = roughness
    if mat.node_tree is None:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Base Color"].default_value = (*color, 1.0)
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Metallic"].default_value = metallic
    if emission is not None:
        ecol, strength = emission
        bsdf.inputs["Emission Color"].default_value = (*ecol, 1.0)
        bsdf.inputs["Emission Strength"].default_value = strength
    if klass is not None:
        mat["archviz_class"] = klass
    return mat


def _oak_floor():
    """Oak boards: a wave texture (bands along x) between two browns."""
    mat = _material("Oak_Floor", (0.42, 0.26, 0.14), roughness=0.35)
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    coord = nt.nodes.new("ShaderNodeTexCoord")
    wave = nt.nodes.new("ShaderNodeTexWave")
    wave.wave_type = "BANDS"
    wave.bands_direction = "X"
    wave.inputs["Scale"].default_value = 1.2
    wave.inputs["Distortion"].default_value = 3.0
    wave.inputs["Detail"].default_value = 2.0
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (0.30, 0.17, 0.08, 1.0)
    ramp.color_ramp.elements[1].color = (0.55, 0.36, 0.20, 1.0)
    nt.links.new(coord.outputs["Object"], wave.inputs["Vector"])
    nt.links.new(wave.outputs["Fac"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def _make_materials():
    return {
        "plaster": _material("Plaster_White", (0.80, 0.78, 0.74), roughness=0.9),
        "oak_floor": _oak_floor(),
        "frame": _material("Frame_Aluminium", (0.20, 0.21, 0.22), roughness=0.35, metallic=0.8),
        "door": _material("Door_Oak_Veneer", (0.55, 0.38, 0.22), roughness=0.5),
        "trim": _material("Painted_Trim", (0.92, 0.92, 0.90), roughness=0.4),
        "steel": _material("Brushed_Steel", (0.65, 0.65, 0.66), roughness=0.3, metallic=1.0),
        "table": _material("Oak_Solid", (0.50, 0.33, 0.18), roughness=0.45),
        "chair": _material("Ash_Wood", (0.62, 0.50, 0.36), roughness=0.5),
        "sofa": _material("Fabric_Grey", (0.30, 0.31, 0.33), roughness=1.0, klass="sofa"),
        "sofa_legs": _material("Dark_Wood", (0.12, 0.08, 0.05), roughness=0.5),
        "coffee": _material("Smoked_Glass_Top", (0.08, 0.08, 0.09), roughness=0.15),
        "brass": _material("Brass", (0.80, 0.60, 0.30), roughness=0.3, metallic=1.0),
        "shade": _material("Linen_Shade", (0.95, 0.90, 0.80), roughness=0.9,
                           emission=((1.0, 0.85, 0.6), 2.0)),
        "terracotta": _material("Terracotta", (0.62, 0.30, 0.18), roughness=0.8),
        "leaf": _material("Leaf_Green", (0.10, 0.35, 0.08), roughness=0.6),
        "rug": _material("Wool_Rust", (0.55, 0.22, 0.12), roughness=1.0),
        "sideboard": _material("Walnut_Veneer", (0.28, 0.16, 0.09), roughness=0.45),
        "shelf": _material("Birch_Plywood", (0.78, 0.66, 0.48), roughness=0.6),
    }


# --------------------------------------------------------------------------------------
# Mesh building

class MeshBuilder:
    """Accumulates boxes, cylinders and spheres in one bmesh, each with a material slot."""

    def __init__(self, materials):
        self.bm = bmesh.new()
        self.materials = list(materials)

    def _tag(self, verts, mat, smooth=False):
        faces = {f for v in verts for f in v.link_faces}
        for f in faces:
            f.material_index = mat
            f.smooth = smooth

    def box(self, lo, hi, mat=0):
        """Axis-aligned box from corner lo to corner hi (local coordinates)."""
        lo, hi = Vector(lo), Vector(hi)
        size = hi - lo
        assert min(size) > 0, (lo, hi)
        m = Matrix.Translation((lo + hi) / 2) @ Matrix.Diagonal((*size, 1.0))
        ret = bmesh.ops.create_cube(self.bm, size=1.0, matrix=m)
        self._tag(ret["verts"], mat)

    def cylinder(self, base, height, r1, r2=None, segments=24, mat=0, smooth=True):
        """Vertical cylinder / frustum standing on point `base`."""
        r2 = r1 if r2 is None else r2
        m = Matrix.Translation(Vector(base) + Vector((0, 0, height / 2)))
        ret = bmesh.ops.create_cone(self.bm, cap_ends=True, cap_tris=False, segments=segments,
                                    radius1=r1, radius2=r2, depth=height, matrix=m)
        self._tag(ret["verts"], mat, smooth)

    def blob(self, center, scale, rot=(0, 0, 0), mat=0, subdivisions=2):
        """Scaled, rotated icosphere (leaves, cushions)."""
        m = (Matrix.Translation(center) @ Euler(rot).to_matrix().to_4x4()
             @ Matrix.Diagonal((*scale, 1.0)))
        ret = bmesh.ops.create_icosphere(self.bm, subdivisions=subdivisions, radius=1.0,
                                         matrix=m)
        self._tag(ret["verts"], mat, smooth=True)

    def finish(self, name, collection, location=(0, 0, 0), rot_z_deg=0.0, klass=None):
        mesh = bpy.data.meshes.new(name)
        self.bm.normal_update()
        self.bm.to_mesh(mesh)
        self.bm.free()
        for mat in self.materials:
            mesh.materials.append(mat)
        obj = bpy.data.objects.new(name, mesh)
        obj.location = location
        obj.rotation_euler = (0.0, 0.0, math.radians(rot_z_deg))
        if klass is not None:
            obj["archviz_class"] = klass
        collection.objects.link(obj)
        return obj


# --------------------------------------------------------------------------------------
# Architecture

def _build_architecture(col, M):
    x0, x1, y0, y1, h, t = ROOM_X0, ROOM_X1, ROOM_Y0, ROOM_Y1, ROOM_H, WALL_T
    objs = {}

    b = MeshBuilder([M["oak_floor"]])
    b.box((x0 - t, y0 - t, -SLAB_T), (x1 + t, y1 + t, 0.0))
    objs["Floor"] = b.finish("Floor", col, klass="floor")

    b = MeshBuilder([M["plaster"]])
    b.box((x0 - t, y0 - t, h), (x1 + t, y1 + t, h + SLAB_T))
    objs["Ceiling"] = b.finish("Ceiling", col, klass="ceiling")

    # North wall: four boxes around the window opening (a real hole).
    w = WINDOW
    b = MeshBuilder([M["plaster"]])
    b.box((x0 - t, y1, 0.0), (w["x0"], y1 + t, h))             # left of opening
    b.box((w["x1"], y1, 0.0), (x1 + t, y1 + t, h))             # right of opening
    b.box((w["x0"], y1, 0.0), (w["x1"], y1 + t, w["z0"]))      # below (parapet)
    b.box((w["x0"], y1, w["z1"]), (w["x1"], y1 + t, h))        # above (lintel)
    objs["Wall_North"] = b.finish("Wall_North", col, klass="wall")

    b = MeshBuilder([M["plaster"]])
    b.box((x0 - t, y0 - t, 0.0), (x1 + t, y0, h))
    objs["Wall_South"] = b.finish("Wall_South", col, klass="wall")

    b = MeshBuilder([M["plaster"]])
    b.box((x0 - t, y0, 0.0), (x0, y1, h))
    objs["Wall_West"] = b.finish("Wall_West", col, klass="wall")

    # East wall: three boxes around the door opening.
    d = DOOR
    b = MeshBuilder([M["plaster"]])
    b.box((x1, y0, 0.0), (x1 + t, d["y0"], h))
    b.box((x1, d["y1"], 0.0), (x1 + t, y1, h))
    b.box((x1, d["y0"], d["height"]), (x1 + t, d["y1"], h))
    objs["Wall_East"] = b.finish("Wall_East", col, klass="wall")

    # Window frame: a thin frame lining the opening (no glass) + an inside sill.
    fw, fd = w["frame"], w["depth"]
    fy0 = y1 + (t - fd) / 2
    fy1 = fy0 + fd
    b = MeshBuilder([M["frame"], M["trim"]])
    b.box((w["x0"], fy0, w["z0"]), (w["x0"] + fw, fy1, w["z1"]))   # left jamb
    b.box((w["x1"] - fw, fy0, w["z0"]), (w["x1"], fy1, w["z1"]))   # right jamb
    b.box((w["x0"] + fw, fy0, w["z0"]), (w["x1"] - fw, fy1, w["z0"] + fw))  # bottom rail
    b.box((w["x0"] + fw, fy0, w["z1"] - fw), (w["x1"] - fw, fy1, w["z1"]))  # top rail
    b.box((w["x0"] - 0.06, y1 - 0.07, w["z0"] - 0.03), (w["x1"] + 0.06, fy0, w["z0"]), mat=1)
    objs["Window_Frame"] = b.finish("Window_Frame", col, klass="windowpane")

    # Door frame: jambs and head lining the opening + casing on the room side.
    j, cw = d["jamb"], 0.07
    b = MeshBuilder([M["trim"]])
    b.box((x1 - 0.02, d["y0"], 0.0), (x1 + t + 0.02, d["y0"] + j, d["height"]))
    b.box((x1 - 0.02, d["y1"] - j, 0.0), (x1 + t + 0.02, d["y1"], d["height"]))
    b.box((x1 - 0.02, d["y0"] + j, d["height"] - j), (x1 + t + 0.02, d["y1"] - j, d["height"]))
    b.box((x1 - 0.02, d["y0"] - cw, 0.0), (x1, d["y0"], d["height"] + cw))
    b.box((x1 - 0.02, d["y1"], 0.0), (x1, d["y1"] + cw, d["height"] + cw))
    b.box((x1 - 0.02, d["y0"], d["height"]), (x1, d["y1"], d["height"] + cw))
    objs["Door_Frame"] = b.finish("Door_Frame", col, klass="door")

    # Door leaf, hinged on the north jamb, swung into the room.
    leaf_w = (d["y1"] - d["y0"]) - 2 * j - 0.006
    leaf_h = d["height"] - j - 0.008
    lt = d["leaf_t"]
    b = MeshBuilder([M["door"], M["steel"]])
    b.box((-lt, -leaf_w, 0.0), (0.0, 0.0, leaf_h))
    for side in (-1, 1):  # lever handles on both faces
        xa = -lt - 0.05 if side < 0 else 0.0
        xb = -lt if side < 0 else 0.05
        b.box((xa, -leaf_w + 0.05, 0.98), (xb, -leaf_w + 0.08, 1.02), mat=1)
        xa2 = -lt - 0.05 if side < 0 else 0.03
        xb2 = -lt - 0.03 if side < 0 else 0.05
        b.box((xa2, -leaf_w + 0.05, 0.99), (xb2, -leaf_w + 0.20, 1.015), mat=1)
    hinge = (x1 + lt, d["y1"] - j - 0.003, 0.004)
    objs["Door"] = b.finish("Door", col, location=hinge, rot_z_deg=-d["ajar_deg"], klass="door")
    return objs


# --------------------------------------------------------------------------------------
# Furniture (local coordinates: origin on the floor at the footprint centre)

def _table(col, M, name, loc, size=(1.6, 0.9), height=0.75, rot=0.0, klass=None, mat="table",
           top_t=0.04, leg=0.06):
    sx, sy = size[0] / 2, size[1] / 2
    b = MeshBuilder([M[mat]])
    b.box((-sx, -sy, height - top_t), (sx, sy, height))
    inset = 0.06
    for cx in (-1, 1):
        for cy in (-1, 1):
            lx = cx * (sx - inset) - leg / 2
            ly = cy * (sy - inset) - leg / 2
            b.box((lx, ly, 0.0), (lx + leg, ly + leg, height - top_t))
    # apron under the top
    b.box((-sx + inset, -sy + inset, height - top_t - 0.08), (sx - inset, -sy + inset + 0.02,
                                                             height - top_t))
    b.box((-sx + inset, sy - inset - 0.02, height - top_t - 0.08), (sx - inset, sy - inset,
                                                                   height - top_t))
    return b.finish(name, col, location=loc, rot_z_deg=rot, klass=klass)


def _chair(col, M, name, loc, facing_deg):
    """Dining chair. Local front faces -y; `facing_deg` rotates it about Z."""
    w, dpt, seat_h, back_h, leg = 0.46, 0.46, 0.46, 0.92, 0.04
    sx, sy = w / 2, dpt / 2
    b = MeshBuilder([M["chair"]])
    b.box((-sx, -sy, seat_h - 0.04), (sx, sy, seat_h))                       # seat
    for cx in (-1, 1):
        b.box((cx * (sx - leg / 2) - leg / 2, -sy, 0.0),
              (cx * (sx - leg / 2) + leg / 2, -sy + leg, seat_h - 0.04))      # front legs
        b.box((cx * (sx - leg / 2) - leg / 2, sy - leg, 0.0),
              (cx * (sx - leg / 2) + leg / 2, sy, back_h))                    # back legs / posts
    b.box((-sx + leg, sy - 0.03, seat_h + 0.20), (sx - leg, sy - 0.01, back_h - 0.02))  # back
    b.box((-sx + leg, -sy + 0.01, 0.15), (sx - leg, -sy + 0.03, 0.18))        # stretchers
    b.box((-sx + leg, sy - 0.03, 0.15), (sx - leg, sy - 0.01, 0.18))
    return b.finish(name, col, location=loc, rot_z_deg=facing_deg)


def _sofa(col, M, loc, rot):
    """Three-seat sofa; local front faces -y, back toward +y."""
    L, D = 2.1, 0.9
    sx, sy = L / 2, D / 2
    arm, base_z, seat_z, back_z, arm_z = 0.18, 0.12, 0.42, 0.86, 0.64
    b = MeshBuilder([M["sofa"], M["sofa_legs"]])
    for cx in (-1, 1):
        for cy in (-1, 1):
            lx, ly = cx * (sx - 0.08), cy * (sy - 0.08)
            b.box((lx - 0.025, ly - 0.025, 0.0), (lx + 0.025, ly + 0.025, base_z), mat=1)
    b.box((-sx + arm, -sy, base_z), (sx - arm, sy, seat_z - 0.12))           # base frame
    b.box((-sx + arm, sy - 0.22, seat_z - 0.12), (sx - arm, sy, back_z))      # back
    b.box((-sx, -sy, base_z), (-sx + arm, sy, arm_z))                         # armrests
    b.box((sx - arm, -sy, base_z), (sx, sy, arm_z))
    inner = (L - 2 * arm) / 3
    for i in range(3):                                                        # seat cushions
        xa = -sx + arm + i * inner + 0.005
        b.box((xa, -sy + 0.02, seat_z - 0.12), (xa + inner - 0.01, sy - 0.22, seat_z))
    for i in range(3):                                                        # back cushions
        xa = -sx + arm + i * inner + 0.005
        b.box((xa, sy - 0.36, seat_z), (xa + inner - 0.01, sy - 0.22, back_z - 0.04))
    return b.finish("Sofa", col, location=loc, rot_z_deg=rot)


def _lamp(col, M, loc):
    b = MeshBuilder([M["brass"], M["shade"]])
    b.cylinder((0, 0, 0), 0.03, 0.16, segments=32)
    b.cylinder((0, 0, 0.03), 1.34, 0.014, segments=12)
    b.cylinder((0, 0, 1.32), 0.32, 0.23, 0.15, segments=32, mat=1)
    return b.finish("Lamp", col, location=loc)


def _plant(col, M, loc):
    b = MeshBuilder([M["terracotta"]])
    b.cylinder((0, 0, 0), 0.42, 0.15, 0.21, segments=32)
    pot = b.finish("Plant_Pot", col, location=loc)

    b = MeshBuilder([M["leaf"]])
    b.cylinder((0, 0, 0.36), 0.05, 0.14, 0.14, segments=24)        # soil
    b.cylinder((0, 0, 0.40), 0.75, 0.018, 0.01, segments=8)        # stem
    # Leaves: flattened ellipsoids on a golden-angle spiral, long axis pointing out and up.
    n = 22
    for i in range(n):
        f = i / (n - 1)
        ang = math.radians(137.5 * i)
        z = 0.55 + 0.62 * f
        tilt = math.radians(55 - 45 * f)          # lower leaves droop out, upper ones rise
        length = 0.17 - 0.06 * f
        out = Vector((math.cos(ang), math.sin(ang), 0.0))
        axis = Vector((math.cos(tilt) * out.x, math.cos(tilt) * out.y, math.sin(tilt)))
        centre = Vector((0.0, 0.0, z)) + axis * (length + 0.01)
        b.blob(centre, (length, 0.35 * length, 0.012), (0.0, -tilt, ang), subdivisions=2)
    return pot, b.finish("Plant_Leaves", col, location=loc)


def _rug(col, M, lo, hi):
    b = MeshBuilder([M["rug"]])
    b.box((lo[0], lo[1], 0.0), (hi[0], hi[1], 0.012))
    return b.finish("Rug", col)


def _sideboard(col, M, loc, rot):
    """Credenza (low sideboard cabinet) with three doors; local front faces -y."""
    L, D, H, leg_h = 1.5, 0.45, 0.78, 0.14
    sx, sy = L / 2, D / 2
    b = MeshBuilder([M["sideboard"], M["steel"]])
    for cx in (-1, 1):
        for cy in (-1, 1):
            lx, ly = cx * (sx - 0.06), cy * (sy - 0.06)
            b.box((lx - 0.02, ly - 0.02, 0.0), (lx + 0.02, ly + 0.02, leg_h), mat=1)
    b.box((-sx, -sy + 0.02, leg_h), (sx, sy, H))                       # carcass
    dw = (L - 0.04) / 3
    for i in range(3):                                                 # door fronts + pulls
        xa = -sx + 0.02 + i * dw + 0.004
        b.box((xa, -sy, leg_h + 0.02), (xa + dw - 0.008, -sy + 0.02, H - 0.02))
        px = xa + (dw - 0.008) / 2
        b.box((px - 0.05, -sy - 0.02, H - 0.10), (px + 0.05, -sy, H - 0.08), mat=1)
    return b.finish("Credenza", col, location=loc, rot_z_deg=rot)


def _shelf(col, M, loc, rot):
    """Open bookshelf, 1.2 wide, 1.9 high; local front faces -y."""
    L, D, H, t = 1.2, 0.34, 1.9, 0.025
    sx, sy = L / 2, D / 2
    b = MeshBuilder([M["shelf"], M["rug"], M["leaf"], M["terracotta"]])
    b.box((-sx, -sy, 0.0), (-sx + t, sy, H))                            # sides
    b.box((sx - t, -sy, 0.0), (sx, sy, H))
    b.box((-sx + t, sy - 0.012, 0.0), (sx - t, sy, H))                  # back
    n = 5
    for i in range(n):                                                  # boards (incl. top)
        z = 0.06 + i * (H - 0.06 - t) / (n - 1)
        b.box((-sx + t, -sy, z), (sx - t, sy - 0.012, z + t))
    b.box((-sx + t, -sy + 0.01, 0.0), (sx - t, -sy + 0.03, 0.06))       # plinth
    # a few books on two boards, so it reads as a shelf
    step = (H - 0.06 - t) / (n - 1)
    for board, start, count in ((1, -sx + 0.05, 9), (3, 0.05, 7)):
        z = 0.06 + board * step + t
        x = start
        for k in range(count):
            bw = 0.03 + 0.012 * ((k * 7) % 3)
            bh = 0.22 + 0.03 * ((k * 5) % 4)
            b.box((x, -sy + 0.06, z), (x + bw, sy - 0.03, z + bh), mat=1 + (k % 3))
            x += bw + 0.004
    return b.finish("Shelf", col, location=loc, rot_z_deg=rot)


# --------------------------------------------------------------------------------------
# Cameras and lights

def _camera(name, col, location, target, lens=24.0, shift_y=0.0):
    cam = bpy.data.cameras.new(name)
    cam.type = "PERSP"
    cam.lens = lens
    cam.sensor_width = 36.0
    cam.sensor_fit = "AUTO"
    cam.shift_y = shift_y
    cam.clip_start = 0.05
    cam.clip_end = 100.0
    obj = bpy.data.objects.new(name, cam)
    obj.location = location
    # Level camera (verticals stay vertical, as architects like it): yaw toward the
    # target, no pitch; the lens shift frames more floor than ceiling.
    d = Vector(target) - Vector(location)
    yaw = math.atan2(d.y, d.x) - math.pi / 2
    obj.rotation_euler = (math.pi / 2, 0.0, yaw)
    col.objects.link(obj)
    return obj


def _lights(col):
    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 4.0
    sun.angle = math.radians(1.0)
    sun.color = (1.0, 0.95, 0.88)
    sun_obj = bpy.data.objects.new("Sun", sun)
    sun_obj.location = (0.6, 6.0, 6.0)
    # Coming from the north (through the window), down into the room.
    direction = Vector((0.15, -1.0, -0.75)).normalized()
    sun_obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    col.objects.link(sun_obj)

    area = bpy.data.lights.new("Area_Ceiling", "AREA")
    area.shape = "RECTANGLE"
    area.size, area.size_y = 3.0, 2.0
    area.energy = 60.0
    area.color = (1.0, 0.96, 0.9)
    area_obj = bpy.data.objects.new("Area_Ceiling", area)
    area_obj.location = (0.0, 0.0, ROOM_H - 0.05)
    col.objects.link(area_obj)

    bulb = bpy.data.lights.new("Lamp_Bulb", "POINT")
    bulb.energy = 25.0
    bulb.shadow_soft_size = 0.05
    bulb.color = (1.0, 0.8, 0.55)
    return bulb


def _world(scene):
    world = bpy.data.worlds.new("Sky")
    if world.node_tree is None:  # Blender < 5.0
        world.use_nodes = True
    bg = next(n for n in world.node_tree.nodes if n.type == "BACKGROUND")
    bg.inputs["Color"].default_value = (0.45, 0.62, 0.88, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    world.color = (0.45, 0.62, 0.88)
    scene.world = world


# --------------------------------------------------------------------------------------

def build_interior() -> bpy.types.Scene:
    """Reset to an empty file and build the example interior. Returns the scene."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Interior"
    root = scene.collection

    def collection(name, parent=root, klass=None):
        c = bpy.data.collections.new(name)
        parent.children.link(c)
        if klass is not None:
            c["archviz_class"] = klass
        return c

    arch = collection("Architecture")
    furn = collection("Furniture")
    storage = collection("Storage", parent=furn, klass=COLLECTION_CLASSES["Storage"])
    lights = collection("Lighting")
    cams = collection("Cameras")

    M = _make_materials()
    _build_architecture(arch, M)

    # Dining area (west half)
    tx, ty = -0.8, 0.45
    _table(furn, M, "Table", (tx, ty, 0.0))
    _chair(furn, M, "Chair_1", (tx - 1.05, ty, 0.0), 90.0)    # west end, facing +x
    _chair(furn, M, "Chair_2", (tx + 1.05, ty, 0.0), -90.0)   # east end, facing -x
    _chair(furn, M, "Chair_3", (tx - 0.4, ty + 0.72, 0.0), 0.0)   # north side, facing -y
    _chair(furn, M, "Chair_4", (tx + 0.4, ty + 0.72, 0.0), 0.0)

    # Lounge (east half): sofa against the east wall, facing west
    _sofa(furn, M, (ROOM_X1 - 0.47, -0.95, 0.0), -90.0)
    _rug(furn, M, (0.55, -1.95), (2.15, 0.05))
    _table(furn, M, "Coffee_Table", (1.45, -0.95, 0.0), size=(1.1, 0.6), height=0.40,
           rot=90.0, klass=OBJECT_CLASSES["Coffee_Table"], mat="coffee", top_t=0.03,
           leg=0.04)
    lamp = _lamp(furn, M, (ROOM_X1 - 0.36, 0.38, 0.0))
    _plant(furn, M, (1.95, 1.92, 0.0))
    _sideboard(storage, M, (-1.85, ROOM_Y1 - 0.23, 0.0), 0.0)
    _shelf(furn, M, (ROOM_X0 + 0.18, 1.0, 0.0), 90.0)

    bulb = _lights(lights)
    bulb_obj = bpy.data.objects.new("Lamp_Bulb", bulb)
    bulb_obj.location = lamp.location + Vector((0.0, 0.0, 1.45))
    lights.objects.link(bulb_obj)
    _world(scene)

    cam = _camera(CAMERA_MAIN, cams, (-2.75, -2.05, 1.6), (1.0, 1.05, 1.6), lens=24.0,
                  shift_y=-0.08)
    _camera(CAMERA_CORNER, cams, (2.72, -2.10, 1.6), (-0.6, 2.2, 1.6), lens=24.0,
            shift_y=-0.08)
    scene.camera = cam

    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y = 1920, 1080
    render.resolution_percentage = 100
    scene.cycles.samples = 128
    scene.cycles.device = "CPU"
    return scene


def _parse_args(argv):
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "interior.blend")
    parser = argparse.ArgumentParser(
        prog="build_interior.py",
        description="Build the ArchViz ControlNet example interior and save it as a .blend.")
    parser.add_argument("--out", default=default_out,
                        help="output .blend path (default: examples/interior.blend)")
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    t0 = time.perf_counter()
    build_interior()
    t1 = time.perf_counter()
    bpy.ops.wm.save_as_mainfile(filepath=out, compress=False)
    t2 = time.perf_counter()
    print(f"build_interior: built in {t1 - t0:.2f} s, saved in {t2 - t1:.2f} s")
    print(out)
    return out


if __name__ == "__main__":
    main()
