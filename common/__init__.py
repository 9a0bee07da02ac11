"""aes-pipeline's library: every stage script imports its logic from here (and never the reverse)."""

__version__ = "0.1.0"
