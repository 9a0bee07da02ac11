"""Core, the lowest layer: files, logging, offline mode, devices, tracking, artifact checks (safetensors
and LightGBM files), the stage errors."""
