"""ivr: reinforcement-learning post-training of vision-language models with verifiable rewards.

Implements IVR-R1 (GRPO + visual erosion localization + trajectory rectification + policy shaping),
the Vision-R1 criteria-driven localization rewards, an SFT cold start, baselines and evaluation.
"""

__version__ = "0.1.0"
