"""Physical pixel sizes in one unit: images carry Z/Y/X pixel sizes in micrometres (``LazyImage.scale``).

Inputs state theirs in many spellings: OME's symbols (``nm``, ``µm``), OME-NGFF's names (``nanometer``), ImageJ's
(``micron``, ``\\u00B5m``, ``pixel``). Each is converted on reading, and outputs say micrometres explicitly, so a
0.2 µm pixel written in nanometres comes back as 0.2 µm, not as 200.
"""

from __future__ import annotations

MICROMETRES_PER: dict[str, float] = {
    "pm": 1e-6, "picometer": 1e-6,
    "å": 1e-4, "angstrom": 1e-4, "ångström": 1e-4,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "micrometre": 1.0,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "in": 25400.0, "inch": 25400.0,
}
#: The unit outputs state: OME's symbol and OME-NGFF's name.
OME_UNIT, NGFF_UNIT = "µm", "micrometer"


def to_micrometres(value: float, unit: str | None, default: str | None = "µm") -> float | None:
    """``value`` in ``unit`` as micrometres; None when the unit is not a length (``pixel``, a typo), so the
    size is left out rather than guessed. A missing unit is ``default`` (OME's is µm)."""
    unit = default if unit is None else unit
    if unit is None:
        return None
    factor = MICROMETRES_PER.get(str(unit).strip().lower().replace("\\u00b5", "µ"))
    return None if factor is None else float(value) * factor
