"""Networks: the AT-BSN teacher, the distilled students and D-BSN."""

from .atbsn import ATBSN, ROTATIONS
from .dbsn import DBSN, bayes_fusion
from .student import Student

__all__ = ["ATBSN", "DBSN", "ROTATIONS", "Student", "bayes_fusion"]
