"""Build Blender scenes from the real files in ``../shared/realscenes`` and measure the
control passes on them.

- The KIT FZK-Haus (ArchiCAD 20 IFC, triangulated in ``AC20-FZK-Haus.npz``) becomes one
  object per IFC element named the Bonsai way (``IfcWallStandardCase/Wand-Ext-ERDG-1``),
  in ``IfcBuildingStorey/<storey>`` collections under ``IfcBuilding/...`` under
  ``IfcSite/...`` under ``IfcProject/...``, with one material per surface style name
  (Glas, Gras, Beton, Ziegel...) and the IFC PredefinedType as a custom property. Three
  cameras: an exterior view and one interior view on each storey.
- FZK-Bonsai: the same house as a user's Bonsai import looks: no PredefinedType
  property, and the IFC file's IfcSpace volumes as objects (wire, hidden in the viewport).
- Sponza (``sponza_s_lod4.glb``) comes in through Blender's glTF importer as it is (one
  unnamed mesh), with two cameras in the atrium.

Run (from the repository root, with the project venv)::

    python -m archviz_controlnet.bench.realscenes --out /tmp/realscenes [--sizes 512,1024]

It saves ``fzk_house.blend``, ``fzk_bonsai.blend`` and ``sponza.blend``, renders every
view with ``archviz passes`` settings at each size, and prints per view: depth levels
used, clipped share (near + far), fallback share, modelling seams lit (pairs of pixels
where two objects of one class meet in one plane, and how many the lines mark) and
capture time; then per view and class, the share of ray-cast pixels whose seg class is
what the IFC file says. Files are read from ``../shared/realscenes`` beside the
checkout, or ``--data``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "realscenes"
HOUSE_NPZ = "AC20-FZK-Haus.npz"
HOUSE_IFC = "AC20-FZK-Haus.ifc"
SPONZA_GLB = "sponza_s_lod4.glb"

#: Viewport colours for the house's surface styles (the beauty pass uses them).
HOUSE_COLOURS = {
    "Anstrich": (0.85, 0.83, 0.78), "Beton": (0.55, 0.55, 0.53), "Glas": (0.45, 0.6, 0.7),
    "Gras": (0.2, 0.45, 0.12), "Kiefer": (0.62, 0.45, 0.28), "Kiefer, glänzend": (0.55, 0.38, 0.22),
    "Kupfer": (0.72, 0.42, 0.25), "Ziegel": (0.55, 0.2, 0.12), "PEN_MATERIAL12": (0.3, 0.3, 0.32),
}

#: name -> (location, target, lens mm)
HOUSE_CAMERAS = {
    "Ext_SW": ((-13.0, -11.0, 1.7), (6.0, 5.0, 2.6), 28.0),
    "Int_EG": ((1.2, 1.0, 1.55), (9.0, 8.5, 1.2), 20.0),
    "Int_OG": ((10.6, 6.6, 3.9), (7.4, 2.4, 3.1), 22.0),
}
SPONZA_CAMERAS = {
    "Atrium": ((-11.0, -0.4, 1.7), (6.0, 0.4, 4.5), 20.0),
    "Aisle": ((9.0, 5.2, 1.7), (-9.0, 5.0, 2.8), 22.0),
}


#: object name -> (IFC class, PredefinedType) of the house last built: what the IFC file
#: says, also where the scene does not carry it (``bonsai=True``).
TRUTH = {}
#: IFC classes that are no geometry (CONVENTIONS.md, "IFC and Bonsai").
NON_PHYSICAL = ("IfcSpace", "IfcOpeningElement", "IfcVirtualElement", "IfcAnnotation", "IfcGrid")


def data_dir(path=None) -> Path:
    return Path(path) if path else DATA_DIR


def _camera(scene, name, location, target, lens):
    import bpy
    import mathutils

    data = bpy.data.cameras.new(name)
    data.lens = lens
    data.clip_start = 0.05
    data.clip_end = 50000.0
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    obj.location = location
    direction = mathutils.Vector(target) - mathutils.Vector(location)
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()
    return obj


def _lights(scene):
    import bpy

    sun = bpy.data.lights.new("Sun", "SUN")
    sun.energy = 4.0
    obj = bpy.data.objects.new("Sun", sun)
    obj.rotation_euler = (math.radians(50), 0.0, math.radians(35))
    scene.collection.objects.link(obj)
    world = bpy.data.worlds.new("Sky")
    bg = world.node_tree.nodes.get("Background") if world.node_tree else None
    if bg is not None:
        bg.inputs["Color"].default_value = (0.55, 0.7, 0.9, 1.0)
        bg.inputs["Strength"].default_value = 0.8
    scene.world = world


def _material(name):
    import bpy

    mat = bpy.data.materials.get(name)
    if mat is None:
        mat = bpy.data.materials.new(name)
        colour = HOUSE_COLOURS.get(name, (0.7, 0.7, 0.7))
        mat.diffuse_color = (*colour, 1.0)
        bsdf = mat.node_tree.nodes.get("Principled BSDF") if mat.node_tree else None
        if bsdf is not None:
            bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    return mat


# ---------------------------------------------------------------- the IFC file's spaces

_STEP_ENTITY = re.compile(r"^#(\d+)\s*=\s*([A-Z0-9_]+)\((.*)\);\s*$", re.M)
_NUMBER = re.compile(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?")


def _step_args(text):
    """The top-level arguments of a STEP entity, as strings."""
    out, depth, cur, quoted = [], 0, "", False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "()":
            depth += 1 if ch == "(" else -1
        elif not quoted and ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def _refs(text):
    return [int(r) for r in re.findall(r"#(\d+)", text)]


def ifc_spaces(ifc_path):
    """The IfcSpace volumes of an IFC file whose spaces are faceted breps (ArchiCAD's
    export): [{name, storey, verts, faces}] in world metres, read from the STEP text with
    no IFC library (the placement chain and the Body representation only)."""
    import numpy as np

    text = Path(ifc_path).read_text(encoding="latin-1")
    ents = {int(m.group(1)): (m.group(2), m.group(3)) for m in _STEP_ENTITY.finditer(text)}

    def point(ref):
        return [float(v) for v in _NUMBER.findall(ents[ref][1])]

    def axis_placement(ref):
        loc, axis, refdir = (_step_args(ents[ref][1]) + ["$", "$"])[:3]
        z = np.array(point(_refs(axis)[0]) if axis != "$" else [0.0, 0.0, 1.0])
        x = np.array(point(_refs(refdir)[0]) if refdir != "$" else [1.0, 0.0, 0.0])
        z /= np.linalg.norm(z)
        x = x - (x @ z) * z
        x /= np.linalg.norm(x)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, point(_refs(loc)[0])
        return m

    def placement(ref):
        rel, local = _step_args(ents[ref][1])[:2]
        parent = placement(_refs(rel)[0]) if rel != "$" else np.eye(4)
        return parent @ axis_placement(_refs(local)[0])

    storey_of = {}
    for kind, args in ents.values():
        if kind == "IFCRELAGGREGATES":
            a = _step_args(args)
            if ents[_refs(a[4])[0]][0] == "IFCBUILDINGSTOREY":
                storey = _step_args(ents[_refs(a[4])[0]][1])[2].strip("'")
                for part in _refs(a[5]):
                    storey_of[part] = storey
    spaces = []
    for ref, (kind, args) in sorted(ents.items()):
        if kind != "IFCSPACE":
            continue
        a = _step_args(args)
        m = placement(_refs(a[5])[0])
        verts, faces = [], []
        for rep in _refs(_step_args(ents[_refs(a[6])[0]][1])[2]):
            r = _step_args(ents[rep][1])
            if r[1].strip("'") != "Body":
                continue
            for item in _refs(r[3]):
                if ents[item][0] != "IFCFACETEDBREP":
                    continue
                for face in _refs(ents[_refs(ents[item][1])[0]][1]):
                    for bound in _refs(ents[face][1]):
                        if ents[bound][0] != "IFCFACEOUTERBOUND":
                            continue
                        loop = _refs(ents[_refs(ents[bound][1])[0]][1])
                        pts = np.array([point(p) for p in loop]) @ m[:3, :3].T + m[:3, 3]
                        faces.append(list(range(len(verts), len(verts) + len(pts))))
                        verts.extend(pts.tolist())
        if faces:
            spaces.append({"name": a[2].strip("'"), "storey": storey_of.get(ref, ""), "verts": verts, "faces": faces})
    return spaces


def build_house(npz_path=None, width=1600, height=1200, ground_plane=0.0, bonsai=False):
    """A fresh scene with the FZK-Haus, the Bonsai way. ``ground_plane``: the side in
    metres of a square ground plane ("Terrain") 2 cm below the site, 0 for none.

    ``bonsai=True`` builds it as a user's Bonsai import looks: names carry no
    PredefinedType property, and the IFC file's IfcSpace volumes are objects too
    (``IfcSpace/<name>`` in their storey's collection, shown as wire and hidden in the
    viewport, as users keep them; Cycles still renders such objects).
    ``TRUTH`` gets each element's IFC class and PredefinedType by object name."""
    import bpy
    import numpy as np

    npz_path = Path(npz_path) if npz_path else DATA_DIR / HOUSE_NPZ
    arrays = np.load(npz_path)
    meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
    verts, faces, mats = arrays["verts"], arrays["faces"], arrays["mats"]

    bpy.ops.wm.read_factory_settings(use_empty=True)
    TRUTH.clear()
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    spatial = meta.get("spatial") or {}
    project = bpy.data.collections.new(f"IfcProject/{spatial.get('IfcProject', 'Project')}")
    scene.collection.children.link(project)
    site = bpy.data.collections.new(f"IfcSite/{spatial.get('IfcSite', 'Site')}")
    project.children.link(site)
    building = bpy.data.collections.new(f"IfcBuilding/{spatial.get('IfcBuilding', 'Building')}")
    site.children.link(building)
    storeys = {}
    for element in meta["elements"]:
        v0, v1 = element["v"]
        f0, f1 = element["f"]
        name = f"{element['ifc_class']}/{element['name'] or 'Unnamed'}"
        mesh = bpy.data.meshes.new(name)
        mesh.from_pydata(verts[v0:v1].astype(float).tolist(), [], faces[f0:f1].tolist())
        for mat_name in element["materials"] or ["Default"]:
            mesh.materials.append(_material(mat_name))
        if element["materials"]:
            mesh.polygons.foreach_set("material_index", mats[f0:f1].astype(np.int32))
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
        TRUTH[obj.name] = (element["ifc_class"], element.get("predefined") or "")
        if element.get("predefined") and not bonsai:
            obj["PredefinedType"] = element["predefined"]
        obj["GlobalId"] = element.get("guid", "")
        storey = element.get("storey")
        if storey:
            key = f"{storey[0]}/{storey[1]}"
            if key not in storeys:
                storeys[key] = bpy.data.collections.new(key)
                building.children.link(storeys[key])
            storeys[key].objects.link(obj)
        else:
            site.objects.link(obj)
    spaces = []
    if bonsai:
        for space in ifc_spaces(npz_path.with_name(HOUSE_IFC)):
            mesh = bpy.data.meshes.new(f"IfcSpace/{space['name']}")
            mesh.from_pydata(space["verts"], [], space["faces"])
            mesh.update()
            obj = bpy.data.objects.new(mesh.name, mesh)
            obj.display_type = "WIRE"
            TRUTH[obj.name] = ("IfcSpace", "")
            (storeys.get(f"IfcBuildingStorey/{space['storey']}") or building).objects.link(obj)
            spaces.append(obj)
    if ground_plane:
        h = ground_plane / 2.0
        mesh = bpy.data.meshes.new("Terrain")
        mesh.from_pydata([(-h, -h, -0.02), (h, -h, -0.02), (h, h, -0.02), (-h, h, -0.02)], [], [(0, 1, 2, 3)])
        obj = bpy.data.objects.new("Terrain", mesh)
        scene.collection.objects.link(obj)
    for cam_name, (loc, target, lens) in HOUSE_CAMERAS.items():
        cam = _camera(scene, cam_name, loc, target, lens)
        if scene.camera is None:
            scene.camera = cam
    _lights(scene)
    bpy.context.view_layer.update()
    for obj in spaces:
        obj.hide_set(True)
    return scene


def build_sponza(glb_path=None, width=1600, height=1200):
    """A fresh scene with Sponza imported by Blender's glTF importer, and two cameras."""
    import bpy

    glb_path = Path(glb_path) if glb_path else DATA_DIR / SPONZA_GLB
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = width, height
    bpy.ops.import_scene.gltf(filepath=str(glb_path))
    for cam_name, (loc, target, lens) in SPONZA_CAMERAS.items():
        cam = _camera(scene, cam_name, loc, target, lens)
        if scene.camera is None:
            scene.camera = cam
    _lights(scene)
    bpy.context.view_layer.update()
    return scene


def contact_sheet(pass_dir, out_path, names=("depth", "lines", "normal", "seg"), width=256):
    """A one-row sheet of the named PNGs of one passes folder, each scaled to ``width``
    (seg by nearest neighbour so its colours stay exact, the others by area so thin lines
    stay visible). Uses Pillow (bench side only)."""
    from PIL import Image

    tiles = []
    for name in names:
        img = Image.open(os.path.join(pass_dir, f"{name}.png")).convert("RGB")
        tiles.append(img.resize((width, round(img.height * width / img.width)),
                                Image.NEAREST if name == "seg" else Image.BOX))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    sheet.save(out_path, optimize=True)
    return out_path


def view_figures(info):
    """The figures the report gives for one view, from its passes.json."""
    stats = info["depth_stats"]
    return {"levels": stats["levels_used"], "clipped": stats["clipped_near"] + stats["clipped_far"],
            "fallback": info["fallback_share"]}


def expected_class(ifc_class, predefined, nz):
    """What the seg pass must say for a surface of a house element whose normal (turned
    toward the camera) has world z ``nz``, from what the IFC file says about the element."""
    if ifc_class == "IfcSlab" and predefined == "ROOF":
        return "ceiling" if nz <= -0.5 else "building"
    if ifc_class == "IfcSlab":
        return "floor" if nz >= 0.5 else ("ceiling" if nz <= -0.5 else "wall")
    return {"IfcWallStandardCase": "wall", "IfcWindow": "windowpane", "IfcDoor": "door", "IfcStair": "stairs",
            "IfcRailing": "railing", "IfcBeam": "ceiling", "IfcMember": "ceiling", "IfcSite": "grass"}[ifc_class]


def ray_hit(scene, depsgraph, origin, direction):
    """The first physical, rendered thing a ray meets: (object, location, unit normal turned
    toward the ray's origin, material), or None. IFC non-physical elements and objects hidden from
    renders are looked through."""
    import mathutils
    import numpy as np

    start, d = mathutils.Vector(origin), mathutils.Vector(direction)
    for _ in range(16):
        ok, loc, normal, face, obj, _m = scene.ray_cast(depsgraph, start, d)
        if not ok:
            return None
        obj = obj.original
        if obj.name.split("/", 1)[0] not in NON_PHYSICAL and not obj.hide_render:
            n = np.array(normal)
            slots = obj.material_slots
            mat = slots[obj.data.polygons[face].material_index].material if slots and obj.type == "MESH" else None
            return obj, np.array(loc), (-n if n @ np.array(direction) > 0 else n), mat
        start = loc + d * 1e-4
    return None


def camera_rays(scene, camera, size):
    """The camera's origin, world-space unit directions of each pixel centre (h, w, 3)
    and its forward axis."""
    import numpy as np

    from ..core import passes as P

    rays = P.pixel_rays(size, [tuple(v) for v in camera.data.view_frame(scene=scene)])
    mw = np.array(camera.matrix_world)
    rot = mw[:3, :3] / np.linalg.norm(mw[:3, :3], axis=0)
    dirs = rays @ rot.T
    return mw[:3, 3], dirs / np.linalg.norm(dirs, axis=-1, keepdims=True), -rot[:, 2]


def pixel_hits(scene, camera, size, step):
    """Ray-cast the pixel centres of every ``step``-th row and column: {(row, col): (object,
    world normal z turned toward the camera, z along the camera axis)}."""
    import bpy

    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin, dirs, forward = camera_rays(scene, camera, size)
    out = {}
    for r in range(step // 2, size[1], step):
        for c in range(step // 2, size[0], step):
            hit = ray_hit(scene, depsgraph, origin, dirs[r, c])
            if hit is not None:
                out[(r, c)] = (hit[0], float(hit[2][2]), float((hit[1] - origin) @ forward))
    return out


def class_figures(scene, camera, result, step=4):
    """{class: [pixels sampled, pixels right]} for the house elements the IFC file names,
    judged against ray casts: each sampled pixel's seg colour against what the IFC class
    and PredefinedType of the element hit say. Left out: pixels on an element's outline,
    surfaces near the 60-degree facing threshold, and coincident surfaces of two elements
    (the render shows another element at the same depth: a tie either way)."""
    import numpy as np
    from PIL import Image

    from ..core.classes import ADE20K

    colour_class = {rgb: name for name, (_i, rgb) in ADE20K.items()}
    with Image.open(result.files["seg"]) as im:
        seg = np.array(im.convert("RGB"))
    ids = np.load(result.files["object_ids"])
    z = np.load(result.files["depth_raw"])
    index = result.info["object_index"]
    name_of = {i: n for n, i in index.items()}
    figures = {}
    for (r, c), (obj, nz, hit_z) in pixel_hits(scene, camera, tuple(result.info["resolution"]), step).items():
        if obj.name not in TRUTH or 0.45 < abs(nz) < 0.55:
            continue
        block = ids[max(0, r - 1):r + 2, max(0, c - 1):c + 2]
        own = index.get(obj.name, -1)
        if (ids[r, c] == own and not (block == own).all()) or (ids[r, c] != own and (block == own).any()):
            continue  # the element's outline; where something else covers it, it counts
        shown = name_of.get(int(ids[r, c]), "")
        if shown and shown != obj.name and abs(z[r, c] - hit_z) <= 5e-3 * hit_z \
                and shown.split("/", 1)[0] not in NON_PHYSICAL:
            continue  # two elements in one surface
        want = expected_class(*TRUTH[obj.name], nz)
        fig = figures.setdefault(want, [0, 0])
        fig[0] += 1
        fig[1] += colour_class.get(tuple(int(v) for v in seg[r, c])) == want
    return figures


def seam_figures(scene, camera, result, plane_mm=2.0, normal_codes=3):
    """(seam pairs, pairs lit): neighbouring pixels of two objects of one class and one
    material whose ray-cast hits lie in one plane (normals agree, each hit within
    ``plane_mm`` of the other's plane), no third object within a pixel (in the render's own
    object pass), and how many of
    those pairs the lines image marks. A modelling seam has no edge to draw."""
    import bpy
    import numpy as np
    from PIL import Image

    ids = np.load(result.files["object_ids"])
    cls = np.load(result.files["class_ids"])
    with Image.open(result.files["lines"]) as im:
        lit = np.array(im.convert("L")) > 0
    with Image.open(result.files["normal"]) as im:
        n = np.array(im.convert("RGB")).astype(np.int64)
    from ..blender import compat
    from ..core.exr import read_exr

    channels = read_exr(os.path.join(result.out_dir, result.info["files"]["exr"]))
    fine = np.rint(compat.pass_channel(channels, "Object Index.X")).astype(np.int64)
    k = fine.shape[0] // ids.shape[0]
    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin, dirs, _forward = camera_rays(scene, camera, tuple(result.info["resolution"]))
    total = lit_pairs = 0
    for dr, dc in ((0, 1), (1, 0)):
        a, b = ids[:ids.shape[0] - dr, :ids.shape[1] - dc], ids[dr:, dc:]
        cand = (a != b) & (a > 0) & (b > 0) & (cls[:cls.shape[0] - dr, :cls.shape[1] - dc] == cls[dr:, dc:])
        cand &= (np.abs(n[:n.shape[0] - dr, :n.shape[1] - dc] - n[dr:, dc:]) <= normal_codes).all(axis=-1)
        for r, c in zip(*np.nonzero(cand)):
            block = fine[max(0, r - 1) * k:(r + 2 + dr) * k, max(0, c - 1) * k:(c + 2 + dc) * k]
            if not np.isin(block, (ids[r, c], ids[r + dr, c + dc])).all():
                continue  # a third object's outline is near: its line may be drawn there
            ha = ray_hit(scene, depsgraph, origin, dirs[r, c])
            hb = ray_hit(scene, depsgraph, origin, dirs[r + dr, c + dc])
            if ha is None or hb is None or ha[0] == hb[0] or ha[3] != hb[3] or ha[2] @ hb[2] < 0.999:
                continue
            if abs((hb[1] - ha[1]) @ ha[2]) * 1000.0 > plane_mm:
                continue
            total += 1
            lit_pairs += bool(lit[r, c] or lit[r + dr, c + dc])
    return total, lit_pairs


def measure(scene, cameras, sizes, out_dir, repeats=1, figures=True, **options):
    """Render each camera at each long side (the median time of ``repeats`` captures);
    return rows of figures. With ``figures``, the first size's passes are also judged
    per class (:func:`class_figures`, where the scene is a house) and for seams."""
    import statistics

    from ..blender.capture.render import CaptureOptions, render_controls

    rows = []
    for cam in cameras:
        row = {"scene": scene.name, "camera": cam}
        for size in sizes:
            opts = CaptureOptions(camera=cam, long_side=size, **options)
            times = []
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                result = render_controls(scene, os.path.join(out_dir, f"{cam}_{size}"), opts)
                times.append(time.perf_counter() - t0)
            row[f"s{size}"] = statistics.median(times)
            if size == sizes[0]:
                row.update(view_figures(result.info))
                row["render_s"] = result.info["timings"]["render"]
                if figures:
                    row["seams"] = seam_figures(scene, scene.objects[cam], result)
                    row["classes"] = class_figures(scene, scene.objects[cam], result) if TRUTH else {}
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archviz_controlnet.bench.realscenes")
    parser.add_argument("--out", required=True, help="folder for the .blend files and the passes")
    parser.add_argument("--data", default="", help=f"folder with {HOUSE_NPZ} and {SPONZA_GLB} (default: {DATA_DIR})")
    parser.add_argument("--sizes", default="512,1024", help="long sides to time, comma-separated")
    parser.add_argument("--supersample", type=int, default=2)
    parser.add_argument("--views", default="", help="comma-separated camera names (default: all)")
    parser.add_argument("--repeats", type=int, default=1, help="captures per view and size (median time)")
    parser.add_argument("--scenes", default="", help="comma-separated: FZK-Haus, FZK-Bonsai, Sponza (default: all)")
    args = parser.parse_args(argv)
    import bpy

    data = data_dir(args.data)
    missing = [n for n in (HOUSE_NPZ, SPONZA_GLB) if not (data / n).is_file()]
    if missing:
        print(f"realscenes: missing {', '.join(missing)} in {data}", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    rows = []
    scenes = (("FZK-Haus", lambda: build_house(data / HOUSE_NPZ), HOUSE_CAMERAS, "fzk_house.blend"),
              ("FZK-Bonsai", lambda: build_house(data / HOUSE_NPZ, bonsai=True), HOUSE_CAMERAS, "fzk_bonsai.blend"),
              ("Sponza", lambda: build_sponza(data / SPONZA_GLB), SPONZA_CAMERAS, "sponza.blend"))
    for label, build, cams, blend in scenes:
        if args.scenes and label not in args.scenes.split(","):
            continue
        if label == "FZK-Bonsai" and not (data / HOUSE_IFC).is_file():
            print(f"realscenes: no {HOUSE_IFC} in {data}: FZK-Bonsai left out", file=sys.stderr)
            continue
        TRUTH.clear()
        scene = build()
        bpy.ops.wm.save_as_mainfile(filepath=str(out / blend))
        wanted = [c for c in cams if not views or c in views]
        for row in measure(scene, wanted, sizes, str(out / "passes" / label), repeats=args.repeats,
                           supersample=args.supersample):
            row["scene"] = label
            rows.append(row)
    head = f"{'scene':10s} {'view':8s} {'levels':>6s} {'clipped':>8s} {'fallback':>9s} {'seams lit':>15s}" + "".join(
        f" {'t' + str(s):>7s}" for s in sizes)
    print(head)
    for r in rows:
        pairs, lit = r["seams"]
        print(f"{r['scene']:10s} {r['camera']:8s} {r['levels']:6d} {r['clipped']:8.1%} {r['fallback']:9.1%}"
              f" {f'{lit}/{pairs}':>9s} {lit / max(pairs, 1):5.0%}" + "".join(f" {r[f's{s}']:6.2f}s" for s in sizes))
    print()
    print("IFC share right per class (ray-cast samples of the first size; * = under 0.5% of the view)")
    print(f"{'scene':10s} {'view':8s} {'class':12s} {'pixels':>7s} {'right':>7s}")
    for r in rows:
        total = sum(n for n, _ in r["classes"].values())
        for cls, (n, right) in sorted(r["classes"].items(), key=lambda kv: -kv[1][0]):
            small = "*" if n < 0.005 * total else " "
            print(f"{r['scene']:10s} {r['camera']:8s} {cls:12s} {n / total:7.1%} {right / n:7.1%}{small}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
