"""The web dashboard (``trainjob dashboard``): a job list and live job pages over the store."""
