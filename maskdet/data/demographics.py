"""Demographic attributes carried in UTKFace-style file names.

UTKFace names are ``[age]_[gender]_[race]_[datetime]...``: gender 0 male, 1 female; race 0 White,
1 Black, 2 Asian, 3 Indian, 4 Others. A name that does not parse gives "unknown" for every attribute,
never an exception, so a dataset with plain names still loads (the count is reported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

UNKNOWN = "unknown"
# The one list of demographic columns: parsed from names (gender, race), binned from age (age_group).
NAME_ATTRIBUTES = ("gender", "race")
GROUP_COLUMNS = (*NAME_ATTRIBUTES, "age_group")
DEMOGRAPHIC_COLUMNS = ("age", *GROUP_COLUMNS)
GENDERS = {0: "male", 1: "female"}
RACES = {0: "white", 1: "black", 2: "asian", 3: "indian", 4: "others"}
DEFAULT_AGE_BINS = (0, 13, 20, 40, 60, 120)

# age (0-116), gender (0/1), race (0-4), then at least one more "_"-separated part (the datetime).
_UTKFACE_NAME = re.compile(r"^(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_[^_]+")


def parse_utkface_name(name: str) -> dict[str, object]:
    """Return ``{"age": int|None, "gender": str, "race": str}`` from a UTKFace-style file name."""
    match = _UTKFACE_NAME.match(name)
    if match is None or int(match["age"]) > 116:
        return {"age": None, "gender": UNKNOWN, "race": UNKNOWN}
    return {
        "age": int(match["age"]),
        "gender": GENDERS[int(match["gender"])],
        "race": RACES[int(match["race"])],
    }


def normalise_group(attribute: str, value: object) -> str:
    """Map a code (``1``) or a name (``"Female"``) of ``attribute`` to its readable group name."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNKNOWN
    names = {"gender": GENDERS, "race": RACES}.get(attribute)
    text = str(value).strip().lower()
    if names is None:
        return text or UNKNOWN
    try:
        code = float(text)  # "1", or "1.0" as pandas writes a code column with gaps
    except ValueError:
        code = None
    if code is not None and code.is_integer() and int(code) in names:
        return names[int(code)]
    if text in names.values() or text == UNKNOWN:
        return text
    raise ValueError(
        f"Unknown {attribute} value {value!r}: use one of {sorted(names.values())} "
        f"or their codes {sorted(names)}."
    )


def age_groups(ages: pd.Series, bin_edges: Sequence[int] = DEFAULT_AGE_BINS) -> pd.Series:
    """Label ages with half-open bins ``[lo, hi)`` such as ``"20-39"``; missing ages are "unknown"."""
    edges = list(bin_edges)
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"data.age_bins must be at least two increasing numbers, got {edges}.")
    labels = [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])]
    import pandas as pd  # here: the settings checks import this module and answer without pandas

    numeric = pd.to_numeric(ages, errors="coerce")
    groups = pd.cut(numeric, bins=edges, right=False, labels=labels)
    return groups.astype(object).where(groups.notna(), UNKNOWN).astype(str)
