"""`livefeed bench`: figures beside baselines measured in the same run."""
