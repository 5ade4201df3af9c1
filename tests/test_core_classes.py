import json

import pytest

from archviz_controlnet.core import classes
from archviz_controlnet.core.classes import ClassError, KeywordTable, resolve_class


@pytest.mark.parametrize("name,expected", [
    ("Chair_1", "chair"), ("Chairs", "chair"), ("Window_Frame", "windowpane"), ("Windows.001", "windowpane"),
    ("Coffee_Table", "coffee table"), ("CoffeeTable", "coffee table"), ("Table_Lamp", "table"),
    ("DiningTable", "table"), ("Plant_Leaves", "plant"), ("Oak_Floor", "floor"), ("Wall_Panel", "wall"),
    ("StairCase", "stairs"), ("Plaster_White", None), ("Tablet", None), ("Embedded", None),
])
def test_keyword_table_matches_words_not_substrings(name, expected):
    assert KeywordTable().lookup(name) == expected


def test_resolution_order_object_material_collection_then_names():
    table = KeywordTable()
    assert resolve_class(("door", "sofa", "rug"), ("Chair", "", ""), table) == ("door", "object property")
    assert resolve_class((None, "sofa", "rug"), ("Chair", "", ""), table) == ("sofa", "material property")
    assert resolve_class((None, None, "rug"), ("Chair", "", ""), table) == ("rug", "collection property")
    assert resolve_class((None, None, None), ("Thing", "Oak_Floor", "Chairs"), table) == ("floor", "material name")
    assert resolve_class((None, None, None), ("Thing", "Paint", "Chairs"), table) == ("chair", "collection name")
    assert resolve_class((None, None, None), ("Thing", "Paint", ""), table) == ("wall", "fallback")
    assert resolve_class((None, None, None), ("Thing", "", ""), table, fallback="building")[0] == "building"


def test_bad_class_names_are_named_in_the_error():
    with pytest.raises(ClassError, match="'chiar'"):
        resolve_class(("chiar", None, None), ("X", "", ""), KeywordTable())
    with pytest.raises(ClassError, match="'nonsense'"):
        classes.check_class("nonsense")
    assert classes.check_class("Coffee_Table") == "coffee table"


def test_user_table_file_takes_priority(tmp_path):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"chair": "sofa", "pouf": "ottoman"}))
    table = KeywordTable.from_file(str(path))
    assert table.lookup("Chair_2") == "sofa" and table.lookup("Pouf") == "ottoman" and table.lookup("Desk") == "desk"
    path.write_text(json.dumps({"pouf": "poufy"}))
    with pytest.raises(ClassError, match="'poufy'"):
        KeywordTable.from_file(str(path))
    path.write_text("{not json")
    with pytest.raises(ClassError, match="not valid JSON"):
        KeywordTable.from_file(str(path))


def test_palette_entries_are_unique_per_index():
    indices = [i for i, _ in classes.ADE20K.values()]
    assert len(indices) == len(set(indices))
    assert classes.palette_lut(["wall", "sky"]).tolist() == [[120, 120, 120], [6, 230, 230]]
