"""Training: objectives, data, the loop, distributed setup, pretraining and finetuning.

Everything here imports torch; the CLI imports it lazily inside commands.
"""
