"""The embedded local backend (the default): supervisor, launcher, scheduler, package envs."""
