"""Core, the lowest layer: files, logging, offline mode, devices, tracking, artifact checks, the stage errors."""
