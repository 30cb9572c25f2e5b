"""Sources of negatives beyond the policy's own retain examples: the built-in background
and stand-ins for near negatives, name-swapped copies of a person's examples, and the
policy's own examples scored cross-fitted for calibration."""
