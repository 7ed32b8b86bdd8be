"""Code that runs inside a job's processes only (never imports the client or the backends)."""
