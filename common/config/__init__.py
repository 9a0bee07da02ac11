"""Config, above core: the typed params, the output paths they resolve to (layout), the stage entry (stage)."""
