"""Networks: the AT-BSN teacher and the distilled students."""

from .atbsn import ATBSN, ROTATIONS
from .student import Student

__all__ = ["ATBSN", "ROTATIONS", "Student"]
