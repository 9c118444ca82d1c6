"""The run's configuration: one section class per concern, the loader, the presets' resolution."""
