"""The backend-neutral job lifecycle: what every backend decides the same way.

Backends (``backends/local``, ``backends/ray``) launch processes and report what happened; the
modules here decide what it means (outcome and reason, events, result, error records, the rank
environment, resume planning). They never talk to a store, a process or a network: a backend
passes in what it observed and writes what they return. See docs/architecture.md.
"""
