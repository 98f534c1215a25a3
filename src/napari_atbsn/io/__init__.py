"""The I/O layer: reading images of any size lazily, writing outputs resumably, and durable file writes."""
