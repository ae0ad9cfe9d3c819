"""Recording, replaying and scoring: contract 3 files through the real path, the alert timeline, ground truth."""
