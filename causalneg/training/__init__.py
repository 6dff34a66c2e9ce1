"""Training: the LightningModule (system), schedules, and callbacks that wire the encoder to the objective."""
