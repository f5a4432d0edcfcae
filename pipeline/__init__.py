"""mateo-bulk: change thousands of Mateo conversations at once, safely."""

__version__ = "0.1.0"
