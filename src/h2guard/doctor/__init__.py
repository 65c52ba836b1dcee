"""h2guard.doctor: probe an HTTP/2 endpoint, trace its frames, explain a reset error, check a
middlebox. Every command drives :mod:`h2guard.doctor.connection` (the wire core, client role)."""
