"""Warm start: ranks forked from a process that has already imported the training stack.

Most of a short job is imports (``import torch, transformers`` takes ~4 s). A *warm process*
per environment imports torch, transformers (and trl, peft, datasets, accelerate when installed)
and trainjob's runtime once, runs nothing else, and forks ranks on request; a forked rank then
becomes exactly what a cold rank is (own session, log files, environment, working directory,
placement, fresh random seeds, default signal handlers) and runs ``trainjob.runtime.bootstrap``.

- ``common``: keys, paths, the socket protocol (shared by both sides; no heavy imports).
- ``server``: the warm process (``python -m trainjob.backends.local.warm.server``).
- ``child``: what a forked process does to become a rank (or a node's agent of several ranks).
- ``handle``: ``ForkedProcess``, the supervisor's ``Popen``-like handle on a forked process.
- ``client``: the supervisor's side: start nodes warm or say why not; start, list, stop servers.

See docs/warm-start.md.
"""
