"""Model parts, the registries config checks names against (poolings, heads, losses): below config, torch only."""
