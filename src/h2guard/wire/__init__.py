"""The wire layer: the sans-IO HTTP/2 core, its events and the frame tracer."""
