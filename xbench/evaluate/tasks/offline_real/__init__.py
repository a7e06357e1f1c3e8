"""Real GSM8K and MMLU test sets from registry wheels, under lm-eval's own task definitions."""
