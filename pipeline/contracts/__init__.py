"""Names shared across the pipeline's seams (rule ids, ...): one definition each, imported everywhere."""
