import pandas as pd
import pytest

from maskdet.data.demographics import age_groups, normalise_group, parse_utkface_name


@pytest.mark.parametrize("name, expected", [
    ("25_0_1_20170113134145123.jpg", {"age": 25, "gender": "male", "race": "black"}),
    ("61_1_0_20170110183726390.jpg.chip.jpg", {"age": 61, "gender": "female", "race": "white"}),
    ("3_1_2_20161219140623097_17.jpg", {"age": 3, "gender": "female", "race": "asian"}),
    ("40_0_3_x.png", {"age": 40, "gender": "male", "race": "indian"}),
    ("70_1_4_20170117183233181.jpg", {"age": 70, "gender": "female", "race": "others"}),
])
def test_utkface_names_parse(name, expected):
    assert parse_utkface_name(name) == expected


@pytest.mark.parametrize("name", [
    "IMG_0001.jpg",            # plain camera name
    "25_2_1_20170113.jpg",     # gender out of range
    "25_0_7_20170113.jpg",     # race out of range
    "25_0_1.jpg",              # no datetime part
    "abc_0_1_2017.jpg",        # age not a number
    "200_0_1_2017.jpg",        # age above UTKFace's 116
    "",
])
def test_malformed_names_give_unknown_not_a_crash(name):
    assert parse_utkface_name(name) == {"age": None, "gender": "unknown", "race": "unknown"}


def test_group_codes_and_names_normalise():
    assert normalise_group("gender", 1) == "female"
    assert normalise_group("gender", "Male") == "male"
    assert normalise_group("race", "1") == "black"
    with pytest.raises(ValueError, match="Unknown race value 'purple'"):
        normalise_group("race", "purple")


def test_age_groups_use_configurable_edges():
    ages = pd.Series([5, 13, 39, 40, None, 119], dtype="Int64")
    assert list(age_groups(ages)) == ["0-12", "13-19", "20-39", "40-59", "unknown", "60-119"]
    assert list(age_groups(ages, [0, 30, 200])) == ["0-29", "0-29", "30-199", "30-199", "unknown", "30-199"]
    with pytest.raises(ValueError, match="increasing"):
        age_groups(ages, [10, 5])
