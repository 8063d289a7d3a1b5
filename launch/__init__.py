"""zerolm: launch."""
