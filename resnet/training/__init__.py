"""Training, evaluation, checkpointing and export of the models, configured by gin."""
