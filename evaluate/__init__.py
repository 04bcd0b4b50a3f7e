"""kamim.evaluate: linear probe, finetune, the paper's analyses and plots."""
