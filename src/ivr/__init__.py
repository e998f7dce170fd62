"""ivr: reinforcement-learning post-training of vision-language models with verifiable rewards.

Implements IVR-R1 (GRPO + visual erosion localization + trajectory rectification + policy shaping),
the Vision-R1 criteria-driven localization rewards, an SFT cold start, baselines and evaluation.
"""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("IVR_QUIET_THIRD_PARTY") == "1":  # a worker of a CLI job (ivr.console)
    from .console import quiet_process as _quiet_process

    _quiet_process()
