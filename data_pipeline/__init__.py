"""zerolm: data_pipeline."""
