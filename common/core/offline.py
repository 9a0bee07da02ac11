"""Keep Hugging Face libraries off the network, and say at start whether a backbone loads without it.

Imports nothing heavy, so it can run first."""

import os

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1"}


def force_offline() -> None:
    """Make huggingface_hub, transformers and datasets refuse the network.

    huggingface_hub reads these variables once, when it is first imported: call this before anything
    imports transformers (05_infer/run.py does it on its first lines).
    """
    os.environ.update(OFFLINE_VARIABLES)


def backbone_problem(backbone: str) -> str | None:
    """Why `backbone` cannot load offline, or None when it is a local folder or a hub name in the Hugging Face
    cache (its config.json there; looked up on disk only, never on the network)."""
    from pathlib import Path

    if Path(backbone).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(backbone, "config.json")
    except HFValidationError:
        return "is not a local model folder (no such folder) nor a Hugging Face name"
    if isinstance(cached, str):
        return None
    return "is neither a local model folder nor in the Hugging Face cache"
