"""The shipped SD-198 map (thesis Table 5.9) follows SD-198's own folder names: a batch whose folder
is ``Herpes_Simplex_Virus`` is grouped into blister, not left out as unmapped."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ml.data.manifest import DATA_DIR, load_class_map, normalise_label

SD198 = [
    line.strip()
    for line in (DATA_DIR / "sd198_classes.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]
TABLE = yaml.safe_load((DATA_DIR / "sd198_to_10.yaml").read_text())
# Table 5.9 spellings that name no SD-198 folder, and the folders that stand for them
TABLE_ONLY = {
    "Scar Alopecia": ["Scarring_Alopecia"],
    "Herpes Simplex": ["Herpes_Simplex_Virus"],
    "Cafe Au Lait Macula": ["Cafe_Au_Lait_Macule"],
    "Behcet's Disease": ["Behcet's_Syndrome"],
    "Actinic Solar Damage": [n for n in SD198 if n.startswith("Actinic_solar_Damage(")],
}


def test_the_list_is_sd198s_198_names():
    assert len(SD198) == len(set(SD198)) == 198


def test_every_table_entry_names_an_sd198_folder_or_stands_beside_the_folders_that_do():
    folders = {normalise_label(n) for n in SD198}
    unmatched = sorted(s for sources in TABLE.values() for s in sources if normalise_label(s) not in folders)
    assert unmatched == sorted(TABLE_ONLY), f"Table 5.9 entries matching no SD-198 folder: {unmatched}"
    cmap = load_class_map("sd198_to_10")
    for entry, standins in TABLE_ONLY.items():
        assert standins and {cmap.lookup(f) for f in standins} == {cmap.lookup(entry)}, entry


@pytest.mark.parametrize(
    ("folder", "label"),
    [
        ("Herpes_Simplex_Virus", "blister"),
        ("Actinic_solar_Damage(Solar_Purpura)", "macula"),
        ("Behcet's_Syndrome", "ulcer"),
    ],
)
def test_sd198_folders_map_to_their_group(folder, label, tmp_path: Path):
    assert load_class_map("sd198_to_10").lookup(folder) == label
