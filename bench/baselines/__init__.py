"""What users write without the template: the baselines every ratio is computed against."""
