"""IFC facts from live IFC data, as the capture reads them through Bonsai when Bonsai is
installed: entities of a real IfcOpenShell model (built here with ifcopenshell.api) give
the class, PredefinedType, aggregate parents and storey. Skips without ifcopenshell (an
optional package: Bonsai brings it inside Blender; the project never needs it)."""

import pytest

pytest.importorskip("bpy")
ifcopenshell = pytest.importorskip("ifcopenshell")

import ifcopenshell.api  # noqa: E402
import ifcopenshell.util.element as element  # noqa: E402

from archviz_controlnet.blender.capture import ifc as capture_ifc  # noqa: E402
from archviz_controlnet.core import classes as C  # noqa: E402


@pytest.fixture(scope="module")
def model():
    f = ifcopenshell.file(schema="IFC4")

    def new(ifc_class, name, predefined=None):
        return ifcopenshell.api.run("root.create_entity", f, ifc_class=ifc_class, name=name,
                                    **({"predefined_type": predefined} if predefined else {}))

    project, storey = new("IfcProject", "P"), new("IfcBuildingStorey", "Erdgeschoss")
    ifcopenshell.api.run("aggregate.assign_object", f, products=[storey], relating_object=project)
    stair, stringer, rail = new("IfcStair", "Treppe"), new("IfcMember", "Wange", "STRINGER"), new("IfcRailing", "H")
    ifcopenshell.api.run("aggregate.assign_object", f, products=[stringer, rail], relating_object=stair)
    roof, truss, rafter = new("IfcRoof", "Dach"), new("IfcElementAssembly", "Binder"), new("IfcMember", "Sparren")
    ifcopenshell.api.run("aggregate.assign_object", f, products=[truss], relating_object=roof)
    ifcopenshell.api.run("aggregate.assign_object", f, products=[rafter], relating_object=truss)
    slab = new("IfcSlab", "Decke", "FLOOR")
    ifcopenshell.api.run("spatial.assign_container", f, products=[stair, roof, slab], relating_structure=storey)
    space = new("IfcSpace", "Wohnen")
    ifcopenshell.api.run("aggregate.assign_object", f, products=[space], relating_object=storey)
    return {"file": f, "stringer": stringer, "rail": rail, "rafter": rafter, "slab": slab, "space": space}


def test_entity_facts_read_class_type_parents_and_storey(model):
    facts = capture_ifc.entity_facts(model["stringer"], element)
    assert facts == capture_ifc.IfcFacts("IfcMember", "STRINGER", (("IfcStair", "IfcStair/Treppe"),),
                                         "Erdgeschoss", "bonsai")
    rafter = capture_ifc.entity_facts(model["rafter"], element)
    assert rafter.parents == (("IfcElementAssembly", "IfcElementAssembly/Binder"), ("IfcRoof", "IfcRoof/Dach"))
    slab = capture_ifc.entity_facts(model["slab"], element)
    assert (slab.ifc_class, slab.predefined, slab.parents, slab.storey) == ("IfcSlab", "FLOOR", (), "Erdgeschoss")
    assert capture_ifc.entity_facts(model["space"], element).non_physical()
    # The parent's Blender object names it where Bonsai has one.
    named = capture_ifc.entity_facts(model["stringer"], element, lambda e: type("O", (), {"name": "IfcStair/T.001"}))
    assert named.parents == (("IfcStair", "IfcStair/T.001"),)


def test_live_facts_classify_whatever_the_object_is_called(model):
    table = C.KeywordTable()

    def cls(key, name):
        facts = capture_ifc.entity_facts(model[key], element)
        return C.classify((None, None, None), (name, "", ""), table, predefined=facts.predefined,
                          ifc_class=facts.ifc_class, parents=facts.parents)

    assert (cls("stringer", "Stringer left").cls, cls("stringer", "Stringer left").rule) == ("stairs", "aggregate")
    assert cls("rail", "Handlauf").cls == "railing"
    assert cls("rafter", "Sparren 3").cls == "roof"
    assert cls("slab", "Decke EG").cls == "slab"
