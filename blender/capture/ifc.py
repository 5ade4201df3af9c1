"""What Cycles draws, and what the IFC data says about an object, for the control passes.

- Render visibility: what a Cycles render of a view layer shows, not the viewport's
  ``visible_get()``: an object renders unless it is hidden from renders, invisible to
  camera rays, or every collection path that holds it in the view layer is excluded,
  hidden from renders or indirect-only.
- IFC facts: an object's IFC class, PredefinedType, the aggregates it is a part of and
  its storey. Read through Bonsai's live IFC data when Bonsai is installed and the object
  belongs to its IFC file (imported here only, inside Blender, never required), otherwise
  from Bonsai-style names: ``IfcClass/Name`` objects, the ``PredefinedType`` custom
  property, the aggregate as an empty parent object or a collection named
  ``IfcStair/...`` above the part, and ``IfcBuildingStorey/...`` collections.

Stdlib + numpy + bpy only.
"""

import importlib
from dataclasses import dataclass

import numpy as np

from ...core import classes as core_classes


# ---------------------------------------------------------------- render visibility

def render_collections(view_layer):
    """The collections whose objects a render of ``view_layer`` draws: reached from the
    scene collection through layer collections none of which is excluded, hidden from
    renders or indirect-only (Cycles shows those to indirect rays only)."""
    found = set()

    def walk(layer_coll, parent_ok):
        coll = layer_coll.collection
        ok = parent_ok and not layer_coll.exclude and not coll.hide_render and not layer_coll.indirect_only
        if ok:
            found.add(coll)
        for child in layer_coll.children:
            walk(child, ok)

    root = view_layer.layer_collection
    found.add(root.collection)  # the scene collection itself cannot be excluded
    for child in root.children:
        walk(child, True)
    return found


def render_visible(obj, collections):
    """Whether a Cycles render draws ``obj`` (``collections``: from :func:`render_collections`).
    Viewport-only flags (hide_viewport, the eye, display as wire or bounds) do not count."""
    if obj.hide_render or not getattr(obj, "visible_camera", True):
        return False
    return any(coll in collections for coll in obj.users_collection)


# ---------------------------------------------------------------- IFC facts

@dataclass(frozen=True)
class IfcFacts:
    ifc_class: str = ""
    predefined: str = ""
    parents: tuple = ()  # (IFC class, name) of the aggregates above, nearest first
    storey: str = ""
    source: str = "name"  # "bonsai" or "name"

    def non_physical(self):
        return core_classes.is_non_physical(self.ifc_class)


def predefined_type(obj):
    """The IFC PredefinedType of an object, when a custom property carries it."""
    for key in ("PredefinedType", "ifc_predefined", "predefined_type"):
        value = obj.get(key)
        if value not in (None, ""):
            return str(value)
    return ""


class IfcReader:
    """IFC facts for the objects of one scene; Bonsai's data first where it has some."""

    def __init__(self, scene):
        self.scene = scene
        self._coll_parents = {}
        for coll in [scene.collection, *scene.collection.children_recursive]:
            for child in coll.children:
                self._coll_parents.setdefault(child, []).append(coll)
        self._bonsai = _bonsai_tool()

    def facts(self, obj):
        if self._bonsai is not None:
            facts = bonsai_facts(obj, self._bonsai)
            if facts is not None:
                return facts
        return self.name_facts(obj)

    def name_facts(self, obj):
        ifc_class, _ = core_classes.parse_ifc_name(obj.name)
        parents, seen = [], set()

        def add(name):
            cls, _ = core_classes.parse_ifc_name(name)
            if cls and cls not in core_classes.SPATIAL_IFC_CLASSES and name not in seen and name != obj.name:
                seen.add(name)
                parents.append((cls, name))

        parent = obj.parent
        while parent is not None:
            add(parent.name)
            parent = parent.parent
        storey = ""
        todo = list(obj.users_collection)
        while todo:  # breadth first: the nearest collections come first
            coll = todo.pop(0)
            cls, name = core_classes.parse_ifc_name(coll.name)
            if cls == "IfcBuildingStorey":
                storey = storey or name
                continue
            if cls in core_classes.SPATIAL_IFC_CLASSES:
                continue
            add(coll.name)
            todo.extend(self._coll_parents.get(coll, []))
        if not storey:
            storey = self._storey_above(obj)
        return IfcFacts(ifc_class or "", predefined_type(obj), tuple(parents), storey, "name")

    def _storey_above(self, obj):
        todo = list(obj.users_collection)
        seen = set()
        while todo:
            coll = todo.pop(0)
            if coll in seen:
                continue
            seen.add(coll)
            cls, name = core_classes.parse_ifc_name(coll.name)
            if cls == "IfcBuildingStorey":
                return name
            todo.extend(self._coll_parents.get(coll, []))
        return ""


def _bonsai_tool():
    """Bonsai's ``tool`` module (BlenderBIM's before its rename), or None without it."""
    for name in ("bonsai.tool", "blenderbim.tool"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def bonsai_facts(obj, tool):
    """IFC facts from Bonsai's live IFC file for an object it links to an entity, else None."""
    try:
        entity = tool.Ifc.get_entity(obj)
    except (AttributeError, RuntimeError, ReferenceError):  # no IFC project loaded
        return None
    if entity is None:
        return None
    element = importlib.import_module("ifcopenshell.util.element")
    return entity_facts(entity, element, lambda e: tool.Ifc.get_object(e))


def entity_facts(entity, element, object_of=lambda e: None):
    """IFC facts of an ifcopenshell entity: ``element`` is ``ifcopenshell.util.element``,
    ``object_of`` gives the Blender object of an entity (for the parents' names)."""
    parents = []
    parent = element.get_aggregate(entity)
    while parent is not None and parent.is_a() not in core_classes.SPATIAL_IFC_CLASSES:
        pobj = object_of(parent)
        parents.append((parent.is_a(), pobj.name if pobj is not None else f"{parent.is_a()}/{parent.Name or ''}"))
        parent = element.get_aggregate(parent)
    container = element.get_container(entity)
    return IfcFacts(entity.is_a(), str(element.get_predefined_type(entity) or ""), tuple(parents),
                    (container.Name or "") if container is not None else "", "bonsai")


# ---------------------------------------------------------------- geometry of objects the viewport skips

def world_matrix(obj):
    """The object's world matrix from its own transform and its parents'. Blender keeps
    ``matrix_world`` current only for objects the viewport evaluates; one disabled in
    viewports (still rendered) keeps a stale one."""
    m = np.array(obj.matrix_basis, dtype=np.float64)
    if obj.parent is not None:
        m = world_matrix(obj.parent) @ np.array(obj.matrix_parent_inverse, dtype=np.float64) @ m
    return m


# ---------------------------------------------------------------- what left-out objects would cover

def would_cover(objects, origins, dirs, forward, z_drawn):
    """Per object, the share of the rays (pixel centres) on which it would be the nearest
    thing had it been drawn: its faces (from its own mesh data, whatever the viewport
    shows) hit nearer than ``z_drawn`` (the depth the render drew along ``forward``;
    inf = background). Rays that miss the object's box, or meet it behind what was
    drawn, are not cast: a model's hundreds of openings inside walls cost little."""
    from mathutils import Vector
    from mathutils.bvhtree import BVHTree

    origins = np.broadcast_to(np.asarray(origins, dtype=np.float64), np.shape(dirs))
    dirs = np.asarray(dirs, dtype=np.float64)
    z_drawn = np.asarray(z_drawn, dtype=np.float64)
    along = dirs @ np.asarray(forward, dtype=np.float64)  # z per unit of ray length
    safe = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    out = {}
    for obj in objects:
        if obj.type != "MESH" or not len(obj.data.polygons):
            out[obj.name] = 0.0
            continue
        mw = world_matrix(obj)
        co = np.empty(len(obj.data.vertices) * 3)
        obj.data.vertices.foreach_get("co", co)
        world = co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
        t1, t2 = (world.min(axis=0) - origins) / safe, (world.max(axis=0) - origins) / safe
        t_in = np.maximum(np.minimum(t1, t2).max(axis=1), 0.0)
        t_out = np.maximum(t1, t2).min(axis=1)
        rays = np.nonzero((t_out >= t_in) & (t_in * along < z_drawn))[0]
        count = 0
        if len(rays):
            tree = BVHTree.FromPolygons(world.tolist(), [tuple(p.vertices) for p in obj.data.polygons])
            for i in rays:
                loc = tree.ray_cast(Vector(origins[i]), Vector(dirs[i]))[0]
                if loc is not None and float(np.dot(np.array(loc) - origins[i], forward)) < z_drawn[i]:
                    count += 1
        out[obj.name] = count / max(1, len(z_drawn))
    return out


def face_normals_z(obj, depsgraph):
    """World normal z and area of each face of a mesh object (after modifiers where the
    depsgraph has them), or None for other object types."""
    if obj.type != "MESH":
        return None
    try:
        mesh = obj.evaluated_get(depsgraph).data
    except (RuntimeError, ReferenceError):
        mesh = obj.data
    count = len(mesh.polygons)
    if not count:
        return None
    normals, areas = np.empty(count * 3), np.empty(count)
    mesh.polygons.foreach_get("normal", normals)
    mesh.polygons.foreach_get("area", areas)
    m = world_matrix(obj)[:3, :3]
    world = normals.reshape(-1, 3) @ np.linalg.inv(m)  # normals go by the inverse transpose
    length = np.linalg.norm(world, axis=1)
    ok = length > 0
    return world[ok, 2] / length[ok], areas[ok] * abs(np.linalg.det(m)) ** (2.0 / 3.0)
