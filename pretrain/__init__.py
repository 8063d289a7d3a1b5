"""zerolm: pretrain."""
