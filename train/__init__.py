"""kamim.train: datasets with paired augmentation, masking, keypoint weighting, models, loss and the loop."""
