"""zerolm: finetune."""
