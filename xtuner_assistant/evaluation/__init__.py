"""What "identity without collapse" means and how a run is scored: the metrics, one identity
evaluation shared by training and `xtuner-assistant eval`, the IdentityEvalHook, what it leaves in a
work dir (records) and the plot of a run."""
