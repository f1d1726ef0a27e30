"""Records and enums shared by every part. Importing this is cheap (no pydantic)."""

from conceptlib.schemas.enums import (
    FAMILY_SLOTS,
    SLOT_WIDTH,
    WIDTH_SLOT,
    Family,
    Kind,
    Slot,
    Source,
    compatibility,
    compatible_families,
)

__all__ = [
    "FAMILY_SLOTS",
    "SLOT_WIDTH",
    "WIDTH_SLOT",
    "Family",
    "Kind",
    "Slot",
    "Source",
    "compatibility",
    "compatible_families",
]
