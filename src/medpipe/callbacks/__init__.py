"""Lightning callbacks used by the tasks (added through ``LightningModule.configure_callbacks``)."""
