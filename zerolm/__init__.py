"""zerolm: zerolm."""
