"""Keep Hugging Face libraries off the network. Imports nothing heavy, so it can run first."""

import os

OFFLINE_VARIABLES = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1"}


def force_offline() -> None:
    """Make huggingface_hub, transformers and datasets refuse the network.

    huggingface_hub reads these variables once, when it is first imported: call this before anything
    imports transformers (05_infer/run.py does it on its first lines).
    """
    os.environ.update(OFFLINE_VARIABLES)
